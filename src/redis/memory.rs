//! The memory watch: what Redis does with memory, read from `INFO` on every master (its
//! `maxmemory-policy`, `used_memory` against `maxmemory`, `evicted_keys`, its `run_id` and how
//! many keys it holds), turned into what the store may do.
//!
//! Read every [`MEMORY_POLL`] (so `used_memory` at most once a second, the policy far more
//! often than every minute) and at once whenever the connector installs a new connection (a
//! first dial, a redial, a Sentinel failover). On Cluster, `INFO` goes to every master.
//! Callers read the outcome from atomics ([`RedisMemory::issue_gate`]), so the request path
//! never waits for `INFO`. Knows nothing of signatures: it says whether writes that grow memory
//! should stop, whether Redis may evict keys, and when a server came back without its keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::RedisSettings;
use super::connector::{Connector, Shared};
use super::dial::background_timeout;
use super::error::Error;
use super::info::{Assessment, NodeInfo, assess, read_masters};

/// How often `INFO` is read (and at once after every new connection).
pub const MEMORY_POLL: Duration = Duration::from_secs(1);

/// What IssueSignature may do, as the last reading says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum IssueGate {
    /// Issue.
    Open = 0,
    /// A master is within the memory reserve of its `maxmemory`.
    Full = 1,
    /// A master's policy may evict records, and `--allow-evicting-redis` is not given.
    Evicting = 2,
}

/// What the watch knows, for the metrics and the messages (read off the request path).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryStatus {
    /// Whether `INFO` was read at least once.
    pub read: bool,
    /// `used_memory / maxmemory` of the fullest master (0 without a limit).
    pub ratio: f64,
    /// `used_memory` and `maxmemory` of the fullest master, bytes.
    pub used_memory: u64,
    /// See `used_memory`.
    pub maxmemory: u64,
    /// `evicted_keys`, summed over the masters (a counter of Redis: it restarts at 0 with it).
    pub evicted_keys: u64,
    /// Masters whose `maxmemory-policy` may evict keys: (node, policy); node empty for the
    /// one server (or the Sentinel master).
    pub evicting: Vec<(String, String)>,
    /// Resets seen since this process started (see [`super::info::Reset`]).
    pub resets: u64,
    /// The masters' `run_id`s at the last reading.
    pub run_ids: Vec<String>,
}

/// The memory watch of one Redis deployment: started by [`RedisMemory::watch`], read by the
/// store on every issue (one atomic load) and by health and metrics.
pub struct RedisMemory {
    gate: AtomicU8,
    /// Whether a master was within the reserve at the last reading (whatever the gate says).
    full: AtomicBool,
    script_flags: AtomicBool,
    /// Whether health may say SERVING as far as memory goes: false until the first answer to
    /// `INFO` (so a replica is not ready before its Redis' policy was seen) and while Redis
    /// may evict without `--allow-evicting-redis`.
    settled: AtomicBool,
    resets: AtomicU64,
    status: Mutex<MemoryStatus>,
    reserve: f64,
    allow_evicting: bool,
}

impl RedisMemory {
    /// Starts watching the Redis that `connector` reaches, with the reserve and policy rules
    /// of `config`.
    pub fn watch(connector: &Connector, config: &RedisSettings) -> Arc<RedisMemory> {
        let memory = Arc::new(RedisMemory {
            gate: AtomicU8::new(IssueGate::Open as u8),
            full: AtomicBool::new(false),
            script_flags: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            resets: AtomicU64::new(0),
            status: Mutex::new(MemoryStatus::default()),
            reserve: config.memory_reserve,
            allow_evicting: config.allow_evicting,
        });
        // Ends with the connector (at once) or with this watch (within a poll).
        let shared = connector.shared();
        shared.spawn_while_owned(keep_watching(
            Arc::downgrade(&memory),
            shared.clone(),
            background_timeout(config.timeout),
        ));
        memory
    }

    /// What IssueSignature may do now.
    pub fn issue_gate(&self) -> IssueGate {
        match self.gate.load(Ordering::Relaxed) {
            1 => IssueGate::Full,
            2 => IssueGate::Evicting,
            _ => IssueGate::Open,
        }
    }

    /// Whether every master takes script flags (`#!lua flags=...`, Redis 7); false until
    /// known, so the flagless scripts, which every version runs, are used meanwhile.
    pub fn script_flags(&self) -> bool {
        self.script_flags.load(Ordering::Relaxed)
    }

    /// Why health must say NOT_SERVING although Redis answers; `None`: no reason.
    pub fn unsafe_to_serve(&self) -> Option<String> {
        if self.settled.load(Ordering::Relaxed) {
            return None;
        }
        let status = self.status();
        if !status.read {
            return Some("Redis' memory settings (INFO) were not read yet".into());
        }
        Some(self.evicting_message(&status))
    }

    /// What the watch knows now.
    pub fn status(&self) -> MemoryStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why issuing stopped for memory, for the refusal.
    pub fn full_message(&self) -> String {
        let s = self.status();
        format!(
            "Redis is within its memory reserve: {} of maxmemory {} used ({:.0} %; issuing stops \
             at {:.0} %, --redis-memory-reserve {}); consume, verify and revoke go on. Free memory \
             or raise maxmemory",
            mib(s.used_memory),
            mib(s.maxmemory),
            s.ratio * 100.0,
            (1.0 - self.reserve) * 100.0,
            self.reserve,
        )
    }

    /// Why issuing stopped for the policy, for the refusal and the log.
    pub fn evicting_message(&self, status: &MemoryStatus) -> String {
        let nodes: Vec<String> = status
            .evicting
            .iter()
            .map(|(node, policy)| match node.as_str() {
                "" => policy.clone(),
                node => format!("{policy} on {node}"),
            })
            .collect();
        format!(
            "Redis' maxmemory-policy is {} (not noeviction): it may evict signature records, \
             and their signatures would then be refused at upload. Set `maxmemory-policy \
             noeviction` on every master (CONFIG SET, redis.conf, or the managed service's \
             parameter group), or accept the risk with --allow-evicting-redis",
            nodes.join(", ")
        )
    }

    /// Takes in one reading; logs what changed.
    fn update(&self, a: &Assessment, run_ids: Vec<String>) {
        let before = self.status();
        for reset in &a.resets {
            self.resets.fetch_add(1, Ordering::Relaxed);
            error!(
                node = reset.node.as_str(),
                keys_before = reset.keys_before,
                keys_after = reset.keys_after,
                "Redis came back without its records (a new run_id and at most half the keys): \
                 restarted without persistence, or failed over to a replica that lacked the data. \
                 Every signature issued before is now refused SIGNATURE_NOT_ISSUED. Run Redis with \
                 AOF (appendfsync always) or with replicas and failover"
            );
        }
        for (node, keys_before, keys_after) in &a.new_servers {
            info!(
                node = node.as_str(),
                keys_before, keys_after, "Redis is another server process now (its run_id changed)"
            );
        }
        let status = MemoryStatus {
            read: true,
            ratio: a.ratio,
            used_memory: a.fullest.as_ref().map_or(0, |f| f.1),
            maxmemory: a.fullest.as_ref().map_or(0, |f| f.2),
            evicted_keys: a.evicted_keys,
            evicting: a.evicting.clone(),
            resets: self.resets.load(Ordering::Relaxed),
            run_ids,
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status.clone();
        let blocked = !a.evicting.is_empty() && !self.allow_evicting;
        let gate = if blocked {
            IssueGate::Evicting
        } else if a.full {
            IssueGate::Full
        } else {
            IssueGate::Open
        };
        self.script_flags.store(a.script_flags, Ordering::Relaxed);
        self.gate.store(gate as u8, Ordering::Relaxed);
        self.settled.store(!blocked, Ordering::Relaxed);

        if a.evicting != before.evicting || !before.read {
            match (a.evicting.is_empty(), self.allow_evicting) {
                (true, _) if before.evicting.is_empty() => {}
                (true, _) => info!("Redis' maxmemory-policy is noeviction again"),
                (false, false) => error!(
                    "{}; until then health is NOT_SERVING and IssueSignature is refused",
                    self.evicting_message(&status)
                ),
                (false, true) => warn!(
                    "{}; running anyway (--allow-evicting-redis): watch vodsigner_redis_evicted_keys",
                    self.evicting_message(&status)
                ),
            }
        }
        let was_full = self.full.swap(a.full, Ordering::Relaxed);
        if a.full && !was_full {
            warn!(
                used_memory = status.used_memory,
                maxmemory = status.maxmemory,
                "{}: IssueSignature is refused STORE_FULL until it has room",
                self.full_message()
            );
        } else if !a.full && was_full {
            info!(
                used_memory = status.used_memory,
                maxmemory = status.maxmemory,
                "Redis has room again: issuing resumes"
            );
        }
    }

    /// `INFO` cannot be read at all (denied to this user, or renamed away): nothing can be
    /// checked, so nothing is held back, and that is said once.
    fn unreadable(&self, e: &Error) {
        if !self.settled.swap(true, Ordering::Relaxed) {
            error!(
                "cannot read Redis INFO ({e}): maxmemory-policy, memory use and resets are not \
                 watched; allow INFO for this Redis user"
            );
        }
    }
}

/// Bytes as MiB, for people.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Reads `INFO` every [`MEMORY_POLL`] and after each new connection, until the watch is
/// dropped. Holds the watch only while it updates it, so the store's drop ends it.
async fn keep_watching(memory: Weak<RedisMemory>, shared: Arc<Shared>, patience: Duration) {
    let mut installs = shared.installs();
    let mut known: HashMap<String, NodeInfo> = HashMap::new();
    loop {
        let Some(watch) = memory.upgrade() else {
            return;
        };
        if let Some(conn) = shared.current() {
            match tokio::time::timeout(patience, read_masters(&conn)).await {
                Ok(Ok(replies)) => {
                    let mut now = Vec::new();
                    for (node, reply) in replies {
                        match reply.map(|t| NodeInfo::parse(&t)) {
                            Ok(Some(info)) => now.push((node, info)),
                            Ok(None) => debug!(node, "INFO without run_id; skipped"),
                            Err(e) if e.is_refused() => watch.unreadable(&e),
                            Err(e) => debug!(node, error = %e, "INFO failed on a master"),
                        }
                    }
                    if !now.is_empty() {
                        let a = assess(&known, &now, watch.reserve);
                        let run_ids = now.iter().map(|(_, i)| i.run_id.clone()).collect();
                        watch.update(&a, run_ids);
                        // A master no longer listed is forgotten (it may come back much later as
                        // a replica's promotion, with other data); one that failed to answer or is
                        // still loading keeps its last reading to be judged against.
                        let listed: Vec<String> = now.iter().map(|(n, _)| n.clone()).collect();
                        known.retain(|node, _| listed.contains(node));
                        for (node, info) in now {
                            if !info.loading {
                                known.insert(node, info);
                            }
                        }
                    }
                }
                Ok(Err(e)) if e.is_refused() => watch.unreadable(&e),
                Ok(Err(e)) => debug!(error = %e, "INFO failed"),
                Err(_) => debug!("INFO did not answer within {} ms", patience.as_millis()),
            }
        }
        drop(watch);
        tokio::select! {
            () = tokio::time::sleep(MEMORY_POLL) => {}
            changed = installs.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
