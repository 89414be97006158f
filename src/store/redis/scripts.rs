//! The Lua scripts of the Redis store, loaded once (`EVALSHA`, reloaded by the redis crate
//! after a Redis restart). Each file in `src/store/lua/` says what it does, its keys and its
//! arguments.

use redis::Script;

use crate::redis::RedisMemory;

/// A script that must run when Redis is over `maxmemory` under `noeviction`: it rewrites one
/// record in place, queues one notification, or only deletes. Redis 7 runs it anyway when it
/// starts with `#!lua flags=allow-oom`; Redis 6 refuses the shebang itself, so the flagless
/// text is sent until every master is known to run 7 (on Redis 6 such a script is refused
/// `OOM` over `maxmemory`, and the reserve is all the room consumes have). Scripts that add
/// keys or members for a new signature (issue's admission, quotas) stay flagless: over
/// `maxmemory` they are refused, which refuses the issue `STORE_FULL`.
pub struct OomScript {
    flagless: Script,
    allow_oom: Script,
}

impl OomScript {
    pub fn new(body: &str) -> OomScript {
        OomScript {
            flagless: Script::new(body),
            allow_oom: Script::new(&format!("#!lua flags=allow-oom\n{body}")),
        }
    }

    /// The text to send: flagged where every master takes flags.
    pub fn pick(&self, memory: &RedisMemory) -> &Script {
        if memory.script_flags() {
            &self.allow_oom
        } else {
            &self.flagless
        }
    }
}

/// Every script of the store.
pub struct Scripts {
    /// Consume a signature's record (`consume.lua`; it, revoke and complete read the record
    /// with `record.lua`).
    pub consume: OomScript,
    /// Revoke one (`revoke.lua`).
    pub revoke: OomScript,
    /// Complete its upload (`complete.lua`).
    pub complete: OomScript,
    /// The abandonment sweep's record step (`sweep.lua`).
    pub sweep: OomScript,
    /// Charge the issuance quotas (`gcra.lua` then `quota.lua`).
    pub quota: Script,
    /// A page of a subject's index (`page.lua`).
    pub page: OomScript,
    /// Queue a notification, dropping its upload from the awaiting index (`queue.lua`).
    pub queue: OomScript,
    /// The sweep's decision on an awaiting entry (`settle.lua`).
    pub settle: OomScript,
    /// Notifications delivered or confirmed (`confirm.lua`).
    pub confirm: OomScript,
    /// Delete a refused issue's record, if still its own (`discard.lua`).
    pub discard: OomScript,
    /// A notification to the dead letters (`dead_letter.lua`).
    pub dead_letter: OomScript,
    /// The sweep's lease (`lease.lua`).
    pub lease: Script,
}

/// The record reader (`record.lua`), then the consume script that calls it: one script text.
const CONSUME_LUA: &str = concat!(
    include_str!("../lua/record.lua"),
    include_str!("../lua/consume.lua")
);

/// The record reader, then the revoke script.
const REVOKE_LUA: &str = concat!(
    include_str!("../lua/record.lua"),
    include_str!("../lua/revoke.lua")
);

/// The record reader, then the completion's record step.
const COMPLETE_LUA: &str = concat!(
    include_str!("../lua/record.lua"),
    include_str!("../lua/complete.lua")
);

/// The GCRA step, then the quota script that calls it: one script text.
pub const QUOTA_LUA: &str = concat!(
    include_str!("../lua/gcra.lua"),
    include_str!("../lua/quota.lua")
);

impl Scripts {
    /// Every script, from its file.
    pub fn new() -> Scripts {
        Scripts {
            consume: OomScript::new(CONSUME_LUA),
            revoke: OomScript::new(REVOKE_LUA),
            complete: OomScript::new(COMPLETE_LUA),
            sweep: OomScript::new(include_str!("../lua/sweep.lua")),
            quota: Script::new(QUOTA_LUA),
            page: OomScript::new(include_str!("../lua/page.lua")),
            queue: OomScript::new(include_str!("../lua/queue.lua")),
            settle: OomScript::new(include_str!("../lua/settle.lua")),
            confirm: OomScript::new(include_str!("../lua/confirm.lua")),
            dead_letter: OomScript::new(include_str!("../lua/dead_letter.lua")),
            discard: OomScript::new(include_str!("../lua/discard.lua")),
            lease: Script::new(include_str!("../lua/lease.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}
