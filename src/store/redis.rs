//! The Redis store: one string key per signature, shared by every replica (SPEC section 4).
//!
//! - Key `{prefix}sig:{secretId}:{random}`, value as in `record.rs`, expiring when the
//!   signature can no longer pass the clock check.
//! - Issue is `SET NX EX`; consume and revoke are Lua scripts, so each is one atomic step on
//!   the server, and two replicas racing on one signature cannot both win.
//! - Memory ([`RedisMemory`]): issuing stops (`STORE_FULL`) once Redis is within its memory
//!   reserve, and while its `maxmemory-policy` may evict records; the scripts that change
//!   records in place, queue an upload's notification or only delete carry
//!   `#!lua flags=allow-oom` ([`OomScript`]), so consumes, revokes and completions go on when
//!   Redis is over `maxmemory`.
//! - The connection is a [`Connector`]'s: dialled in the background (the service starts while
//!   Redis is still coming up) and replaced when it breaks or keeps timing out; this store
//!   tells it how each call went. Every call is bounded by the store timeout and fails closed
//!   with a [`StoreError`].

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::record::{compact_issued, encode_field};
use super::{
    Admission, Awaiting, CompleteOutcome, ConsumeOutcome, FailureCause, ListCursor, Listed,
    Observed, QuotaOutcome, Record, RecordKey, RecordRef, RecordState, Store, StoreError,
    StoreObserver, StoreOp, SubjectEntry, Sweep, Upload, idempotency_token, outbox,
};
use crate::quota::Charge;
use crate::redis::{Conn, Connector, Failure, IssueGate, RedisConfig, RedisMemory};

/// Consume (flagged allow-oom: it only rewrites its one record; a compact issued record grows
/// by one small string): `issued` becomes `consumed` keeping the expiry, but at least ARGV[6] seconds
/// more (so the upload can still complete), and the subject digest when the record has one; a
/// repeat with the same idempotency token answers the same success, also once the upload is
/// over. Returns `{outcome, at, subject digest, consumed_at}`. ARGV: fingerprint, now,
/// idempotency token, compact form of the fingerprint, issue time, seconds to keep. A value
/// of digits is the compact issued form (`record.rs`), which has no subject; a completed or
/// abandoned record has more fields after the subject (the consume time first).
const CONSUME_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub, consumed
if string.match(v, '^%d+$') then
  if v ~= ARGV[4] then return {'missing'} end
  state, fp, issued, changed, idem, sub = 'issued', ARGV[1], ARGV[5], ARGV[5], '', ''
else
  state, fp, issued, changed, idem, sub = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|?(%x*)$')
  if not state then
    state, fp, issued, changed, idem, sub, consumed = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|(%x*)|(%-?%d+)|')
  end
  if not state or fp ~= ARGV[1] then return {'missing'} end
end
if state == 'issued' then
  local tail = ''
  if sub ~= '' then tail = '|' .. sub end
  redis.call('SET', KEYS[1], 'v1|consumed|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. tail, 'KEEPTTL')
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
  return {'ok', ARGV[2], sub}
end
consumed = consumed or changed
if state ~= 'revoked' and ARGV[3] ~= '' and idem == ARGV[3] then return {'ok', consumed, sub} end
return {state, changed, sub, consumed}
"#;

/// Revoke: `issued` becomes `revoked` keeping the expiry. The record is named by the
/// signature's fingerprint (ARGV[1], RevokeSignature) or by its subject's digest (ARGV[3],
/// RevokeSubject); an empty one is not compared, and the caller always gives one of them.
/// ARGV[4] and ARGV[5]: the compact form of the fingerprint and the issue time, for a record
/// in the compact issued form (which has no subject). Returns `{state before, at, subject
/// digest, consumed_at}`.
const REVOKE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub, consumed
if string.match(v, '^%d+$') then
  if ARGV[3] ~= '' or v ~= ARGV[4] then return {'missing'} end
  state, fp, issued, changed, sub = 'issued', ARGV[1], ARGV[5], ARGV[5], ''
else
  state, fp, issued, changed, idem, sub = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|?(%x*)$')
  if not state then
    state, fp, issued, changed, idem, sub, consumed = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|(%x*)|(%-?%d+)|')
  end
  if not state then return {'missing'} end
  if ARGV[1] ~= '' and fp ~= ARGV[1] then return {'missing'} end
  if ARGV[3] ~= '' and sub ~= ARGV[3] then return {'missing'} end
end
if state == 'issued' then
  local tail = ''
  if sub ~= '' then tail = '|' .. sub end
  redis.call('SET', KEYS[1], 'v1|revoked|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. tail, 'KEEPTTL')
  return {'issued', ARGV[2], sub}
end
return {state, changed, sub, consumed or changed}
"#;

/// Admission to a subject's index, with the outstanding cap, in one atomic step on the
/// subject's slot. KEYS: the outstanding index (record name scored by `expireTime`), the
/// listing index (entry scored by issue time), the subject's name (for the upload
/// notifications, which name the subject). ARGV: outstanding member, expireTime, listing
/// member, issued_at, expired-before, cap (0: none), TTL seconds, issued-before (entries
/// issued before it are past the longest validity), the subject. Returns 1 (added) or 0 (cap
/// reached).
const ADMIT_LUA: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
local cap = tonumber(ARGV[6])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('SET', KEYS[3], ARGV[9], 'NX')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[8])
local cutoff = tonumber(ARGV[5])
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, 3)) do
  local exp = tonumber(string.match(m, '^[^:]*:[^:]*:(%-?%d+):'))
  if not exp or exp < cutoff then redis.call('ZREM', KEYS[2], m) end
end
local ttl = tonumber(ARGV[7])
for _, k in ipairs(KEYS) do
  if redis.call('TTL', k) < ttl then redis.call('EXPIRE', k, ttl) end
end
return 1
"#;

/// A page of a subject's listing index, newest first, after a cursor, skipping (and
/// deleting) expired entries. KEYS: the listing index. ARGV: expired-before, count, cursor
/// given (1/0), cursor score, cursor member. Returns `{member, score, member, score, ...}`.
const PAGE_LUA: &str = r#"
local cutoff = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local max = '+inf'
if ARGV[3] == '1' then max = ARGV[4] end
local out, expired = {}, {}
local offset, batch = 0, want + 16
while #out < 2 * want do
  local r = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES', 'LIMIT', offset, batch)
  for i = 1, #r, 2 do
    local m, s = r[i], r[i + 1]
    if not (ARGV[3] == '1' and tonumber(s) == tonumber(ARGV[4]) and m >= ARGV[5]) then
      local exp = tonumber(string.match(m, '^[^:]*:[^:]*:(%-?%d+):'))
      if not exp or exp < cutoff then
        expired[#expired + 1] = m
      elseif #out < 2 * want then
        out[#out + 1] = m
        out[#out + 1] = s
      end
    end
  end
  if #r < 2 * batch then break end
  offset = offset + batch
end
for _, m in ipairs(expired) do redis.call('ZREM', KEYS[1], m) end
return out
"#;

/// Quotas (GCRA, see `crate::quota`): checks every key of the group with the server's clock,
/// and charges them all only if every one has room. Returns `{0, 0}` or `{index, wait_ms}`.
const QUOTA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then return {i, allow_at - now} end
  new[i] = tat + interval
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%d', new[i]), 'PX', string.format('%d', new[i] - now))
end
return {0, 0}
"#;

/// A script that must run when Redis is over `maxmemory` under `noeviction`: it rewrites one
/// record in place, queues one notification, or only deletes. Redis 7 runs it anyway when it
/// starts with `#!lua flags=allow-oom`; Redis 6 refuses the shebang itself, so the flagless
/// text is sent until every master is known to run 7 (on Redis 6 such a script is refused
/// `OOM` over `maxmemory`, and the reserve is all the room consumes have). Scripts that add
/// keys or members for a new signature (issue's admission, quotas) stay flagless: over
/// `maxmemory` they are refused, which refuses the issue `STORE_FULL`.
pub(super) struct OomScript {
    flagless: Script,
    allow_oom: Script,
}

impl OomScript {
    pub(super) fn new(body: &str) -> OomScript {
        OomScript {
            flagless: Script::new(body),
            allow_oom: Script::new(&format!("#!lua flags=allow-oom\n{body}")),
        }
    }

    /// The text to send: flagged where every master takes flags.
    pub(super) fn pick(&self, memory: &RedisMemory) -> &Script {
        if memory.script_flags() {
            &self.allow_oom
        } else {
            &self.flagless
        }
    }
}

/// Records in Redis, shared by all replicas.
pub struct RedisStore {
    connector: Connector,
    pub(super) memory: Arc<RedisMemory>,
    prefix: String,
    timeout: Duration,
    min_replicas_ack: u32,
    consume: OomScript,
    revoke: OomScript,
    quota: Script,
    admit: Script,
    page: OomScript,
    complete: OomScript,
    sweep: OomScript,
    release: OomScript,
    /// The outbox's scripts (`outbox/redis.rs`).
    pub(super) outbox: OutboxScripts,
    pub(super) observed: Observed,
}

/// The scripts of the awaiting index and the outbox.
pub(super) struct OutboxScripts {
    pub(super) queue: OomScript,
    pub(super) settle: OomScript,
    pub(super) confirm: OomScript,
    pub(super) dead_letter: OomScript,
    pub(super) lease: Script,
}

impl RedisStore {
    /// A store for `config`; connects in the background, so Redis need not be up yet.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, String> {
        let connector = Connector::start(config)?;
        Ok(RedisStore {
            memory: RedisMemory::watch(&connector, config),
            connector,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            min_replicas_ack: config.min_replicas_ack,
            consume: OomScript::new(CONSUME_LUA),
            revoke: OomScript::new(REVOKE_LUA),
            quota: Script::new(QUOTA_LUA),
            admit: Script::new(ADMIT_LUA),
            page: OomScript::new(PAGE_LUA),
            complete: OomScript::new(include_str!("lua/complete.lua")),
            sweep: OomScript::new(include_str!("lua/sweep.lua")),
            release: OomScript::new(include_str!("lua/release.lua")),
            outbox: OutboxScripts {
                queue: OomScript::new(include_str!("lua/queue.lua")),
                settle: OomScript::new(include_str!("lua/settle.lua")),
                confirm: OomScript::new(include_str!("lua/confirm.lua")),
                dead_letter: OomScript::new(include_str!("lua/dead_letter.lua")),
                lease: Script::new(include_str!("lua/lease.lua")),
            },
            observed: Observed::default(),
        })
    }

    /// The connection this store uses, for what shares it (the audit stream).
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Its key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of a signature's record.
    pub fn record_key(&self, sig: &RecordRef<'_>) -> String {
        format!(
            "{}sig:{}:{}",
            self.prefix, sig.key.secret_id, sig.key.random
        )
    }

    /// The Redis key of a record.
    fn key_of(&self, key: &RecordKey<'_>) -> String {
        format!("{}sig:{}:{}", self.prefix, key.secret_id, key.random)
    }

    /// The keys of a subject's indexes, under the subject's own hash tag (one Cluster slot):
    /// (outstanding, listing).
    pub fn subject_keys(&self, subject: &str) -> (String, String) {
        (
            format!("{}sub:{{{subject}}}:out", self.prefix),
            format!("{}sub:{{{subject}}}:all", self.prefix),
        )
    }

    /// The key holding a subject's name, next to its indexes.
    fn subject_name_key(&self, subject: &str) -> String {
        format!("{}sub:{{{subject}}}:name", self.prefix)
    }

    /// The key of a shard's awaiting index (see `outbox`).
    pub(super) fn awaiting_key(&self, shard: u32) -> String {
        format!("{}uploads:{{{shard}}}:awaiting", self.prefix)
    }

    /// The key of a shard's outbox stream.
    pub(super) fn outbox_key(&self, shard: u32) -> String {
        format!("{}uploads:{{{shard}}}:outbox", self.prefix)
    }

    /// The key of a shard's dead letters.
    pub(super) fn dead_letters_key(&self, shard: u32) -> String {
        format!("{}uploads:{{{shard}}}:dead", self.prefix)
    }

    /// After a record left `issued` (consume, revoke): its subject's cap no longer counts it,
    /// and the subject's name is kept at least `keep_for` seconds (a consumed upload may
    /// still complete, and its notification names the subject). The index lives in another
    /// slot than the record, so this is a second step; when it fails, the entry stays until
    /// its expiry (the cap is then stricter, never looser).
    async fn release(&self, conn: &mut Conn, subject: &str, key: &RecordKey<'_>, keep_for: u64) {
        if subject.is_empty() {
            return;
        }
        let mut call = self
            .release
            .pick(&self.memory)
            .key(self.subject_keys(subject).0);
        call.key(self.subject_name_key(subject))
            .arg(format!("{}:{}", key.secret_id, key.random))
            .arg(keep_for);
        if let Err(e) = self
            .bounded(conn, async |c| call.invoke_async::<i64>(c).await)
            .await
        {
            tracing::warn!(error = %e, "could not update the subject index; the entry stays until it expires");
        }
    }

    /// The connection, waiting (within the store timeout) for the first one.
    pub(super) async fn conn(&self) -> Result<Conn, StoreError> {
        self.connector.ready(self.timeout).await.ok_or_else(|| {
            StoreError::new(FailureCause::NotConnected, "not connected to Redis yet")
        })
    }

    /// Runs one call on `conn`, bounded by the store timeout, and tells the connector how it
    /// went: a connection that keeps timing out, breaks, or belongs to a demoted master is
    /// replaced. Any failure fails closed.
    pub(super) async fn bounded<T>(
        &self,
        conn: &mut Conn,
        call: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(Ok(v)) => {
                self.connector.answered(conn);
                Ok(v)
            }
            Ok(Err(e)) => {
                let demoted =
                    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                let cause = if demoted || e.is_io_error() || e.is_connection_dropped() {
                    self.connector.failed(conn, Failure::Broken);
                    FailureCause::Connection
                } else if e.is_timeout() {
                    self.connector.failed(conn, Failure::Timeout);
                    FailureCause::Timeout
                } else {
                    // The server answered (a script error, say): the connection is alive.
                    self.connector.answered(conn);
                    if e.code() == Some("OOM") {
                        // Over maxmemory under noeviction: refused as STORE_FULL.
                        return Err(StoreError::new(
                            FailureCause::OutOfMemory,
                            format!(
                                "Redis is over its maxmemory and refuses writes that grow memory \
                                 ({e}); free memory or raise maxmemory"
                            ),
                        ));
                    }
                    FailureCause::Server
                };
                Err(StoreError::new(cause, e.to_string()))
            }
            Err(_) => {
                self.connector.failed(conn, Failure::Timeout);
                Err(StoreError::new(
                    FailureCause::Timeout,
                    format!("no answer within {} ms", self.timeout.as_millis()),
                ))
            }
        }
    }

    /// With `--min-replicas-ack N`, waits (bounded) until N replicas acknowledged the writes
    /// made so far on `conn` (issue, consume, revoke); fewer means success cannot be promised.
    pub(super) async fn replicated(&self, conn: &Conn, key: &str) -> Result<(), StoreError> {
        if self.min_replicas_ack == 0 {
            return Ok(());
        }
        // With Sentinel, every replica it could promote must have the write: a failover that
        // picks one lacking it would bring back an `issued` state (a second acceptance) or lose
        // an issue record.
        let needed = self.min_replicas_ack.max(conn.promotable_replicas());
        // Boxed: the wait (a Cluster route) is a large future, and held inline it would
        // enlarge every issue and consume, replicas or not.
        let wait = Box::pin(conn.replicated(needed, key));
        let acked = match tokio::time::timeout(self.timeout, wait).await {
            Ok(Ok(acked)) => acked,
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {} ms", self.timeout.as_millis()),
                };
                self.connector.failed(conn, Failure::Timeout);
                return Err(StoreError::new(
                    FailureCause::Replication,
                    format!(
                        "applied on the master, but whether replicas have it is unknown ({e}); the \
                     outcome is unknown until a retry with the same idempotency key"
                    ),
                ));
            }
        };
        if acked < i64::from(needed) {
            return Err(StoreError::new(
                FailureCause::Replication,
                format!(
                    "applied on the master but acknowledged by {acked} of {needed} replicas in time; \
                 the outcome is unknown until a retry with the same idempotency key"
                ),
            ));
        }
        Ok(())
    }
}

/// Reads a script's `{state, at, subject, consumed_at}` reply.
fn scripted_status(reply: &[String]) -> Result<RecordState, StoreError> {
    let at = || -> Result<i64, StoreError> {
        reply
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::reply(reply))
    };
    let consumed_at = || -> Result<i64, StoreError> {
        reply
            .get(3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::reply(reply))
    };
    match reply.first().map(String::as_str) {
        Some("missing") => Ok(RecordState::NotIssued),
        Some("issued") => Ok(RecordState::Issued),
        Some("consumed") => Ok(RecordState::Consumed { at: at()? }),
        Some("revoked") => Ok(RecordState::Revoked { at: at()? }),
        Some("completed") => Ok(RecordState::Completed {
            at: at()?,
            consumed_at: consumed_at()?,
        }),
        Some("abandoned") => Ok(RecordState::Abandoned {
            at: at()?,
            consumed_at: consumed_at()?,
        }),
        _ => Err(StoreError::reply(reply)),
    }
}

impl Store for RedisStore {
    async fn insert_issued(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        ttl_seconds: u64,
        subject: &str,
    ) -> Result<bool, StoreError> {
        self.observed
            .run(StoreOp::Issue, || async move {
                let mut conn = self.conn().await?;
                // Without a subject, the compact form (an integer Redis stores in the key's header).
                let value = match compact_issued(sig.fingerprint) {
                    Some(compact) if subject.is_empty() => compact,
                    _ => Record::issued(sig.fingerprint, now, subject).encode(),
                };
                let mut set = redis::cmd("SET");
                let key = self.record_key(&sig);
                set.arg(&key)
                    .arg(value)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl_seconds.max(1));
                let inserted = self
                    .bounded(&mut conn, async |c| {
                        set.query_async::<Option<String>>(c).await
                    })
                    .await?
                    .is_some();
                if inserted {
                    // A record only the old master had would vanish in a failover, and a legitimate
                    // upload would then be refused: with --min-replicas-ack, issue waits too.
                    self.replicated(&conn, &key).await?;
                }
                Ok(inserted)
            })
            .await
    }

    async fn status(&self, sig: RecordRef<'_>) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Status, || async move {
                let mut conn = self.conn().await?;
                let mut get = redis::cmd("GET");
                get.arg(self.record_key(&sig));
                let text = self
                    .bounded(&mut conn, async |c| {
                        get.query_async::<Option<String>>(c).await
                    })
                    .await?;
                Ok(text
                    .as_deref()
                    .and_then(|text| Record::decode_for(text, &sig))
                    .map_or(RecordState::NotIssued, |r| r.state_for(sig.fingerprint)))
            })
            .await
    }

    async fn consume(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        idempotency_key: &str,
        awaiting: Awaiting<'_>,
    ) -> Result<ConsumeOutcome, StoreError> {
        self.observed
            .run(StoreOp::Consume, || async move {
                let mut conn = self.conn().await?;
                let key = self.record_key(&sig);
                let mut call = self.consume.pick(&self.memory).key(&key);
                call.arg(sig.fingerprint)
                    .arg(now)
                    .arg(idempotency_token(idempotency_key))
                    .arg(compact_issued(sig.fingerprint).unwrap_or_default())
                    .arg(sig.issued_at)
                    .arg(awaiting.keep_for.max(1));
                // The upload enters the awaiting index before the record changes (sent first,
                // answered together): a crash in between leaves an entry the sweep drops, never
                // a consumed upload nobody would mark abandoned. NX: a replay must not move the
                // entry of the consume that won.
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(self.awaiting_key(outbox::shard_of(sig.key.random)))
                    .arg("NX")
                    .arg(awaiting.due)
                    .arg(outbox::awaiting_member(&sig.key, &awaiting.context));
                let mut intent_conn = conn.clone();
                let (intent, reply) = tokio::join!(
                    self.bounded(&mut intent_conn, async |c| zadd.query_async::<i64>(c).await),
                    self.bounded(&mut conn, async |c| call.invoke_async::<Vec<String>>(c).await),
                );
                let reply = reply?;
                if let Err(e) = intent {
                    // Redis over maxmemory refuses the entry but not the consume: the upload goes
                    // on, and only its abandonment would go unnoticed.
                    tracing::warn!(error = %e, "could not enter a consumed upload in the awaiting index");
                }
                if reply.first().map(String::as_str) == Some("ok") {
                    let at = reply
                        .get(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| StoreError::reply(&reply))?;
                    // Also on an idempotent repeat: success is only promised once replicated.
                    self.replicated(&conn, &key).await?;
                    let subject = reply.get(2).map_or("", String::as_str);
                    self.release(&mut conn, subject, &sig.key, awaiting.keep_for)
                        .await;
                    return Ok(ConsumeOutcome::Consumed { at });
                }
                scripted_status(&reply).map(ConsumeOutcome::Refused)
            })
            .await
    }

    async fn complete(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        upload: &Upload,
    ) -> Result<CompleteOutcome, StoreError> {
        self.observed
            .run(StoreOp::Complete, || async move {
                let mut conn = self.conn().await?;
                let key = self.record_key(&sig);
                let mut call = self.complete.pick(&self.memory).key(&key);
                call.arg(sig.fingerprint)
                    .arg(now)
                    .arg(encode_field(&upload.file_id))
                    .arg(upload.file_size)
                    .arg(encode_field(&upload.media_type))
                    .arg(encode_field(&upload.media_url))
                    .arg(compact_issued(sig.fingerprint).unwrap_or_default())
                    .arg(sig.issued_at);
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let field = |i: usize| reply.get(i).map_or("", String::as_str);
                let number = |i: usize| {
                    field(i)
                        .parse::<i64>()
                        .map_err(|_| StoreError::reply(&reply))
                };
                match field(0) {
                    outcome @ ("ok" | "repeat") => {
                        // Also on a repeat: success is only promised once replicated.
                        self.replicated(&conn, &key).await?;
                        Ok(CompleteOutcome::Completed {
                            at: number(1)?,
                            late: field(4) == "1",
                            repeat: outcome == "repeat",
                            consumed_at: number(3)?,
                            subject: field(2).to_owned(),
                        })
                    }
                    "other" => Ok(CompleteOutcome::OtherFile {
                        at: number(1)?,
                        file_id: super::record::decode_field(field(5)),
                    }),
                    _ => scripted_status(&reply).map(CompleteOutcome::Refused),
                }
            })
            .await
    }

    async fn sweep(
        &self,
        record: RecordKey<'_>,
        now: i64,
        window: i64,
    ) -> Result<Sweep, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Sweep, async move {
                let mut conn = self.conn().await?;
                let key = self.key_of(&record);
                let mut call = self.sweep.pick(&self.memory).key(&key);
                call.arg(now).arg(window);
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                match reply.first().map(String::as_str) {
                    Some("wait") => {
                        let consumed: i64 = reply
                            .get(1)
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| StoreError::reply(&reply))?;
                        Ok(Sweep::NotYet {
                            due: consumed.saturating_add(window),
                        })
                    }
                    Some("record") => {
                        let record = reply
                            .get(1)
                            .and_then(|text| Record::decode(text))
                            .ok_or_else(|| StoreError::reply(&reply))?;
                        if record.upload.is_some() {
                            Ok(Sweep::Completed { record })
                        } else {
                            // Marked by this step: replicated first, as every record change.
                            self.replicated(&conn, &key).await?;
                            Ok(Sweep::Abandoned { record })
                        }
                    }
                    _ => Ok(Sweep::Nothing),
                }
            })
            .await
    }

    async fn subject_name(&self, digest: &str) -> Result<Option<String>, StoreError> {
        self.observed
            .run(StoreOp::Notify, || async move {
                let mut conn = self.conn().await?;
                let mut get = redis::cmd("GET");
                get.arg(self.subject_name_key(digest));
                self.bounded(&mut conn, async |c| {
                    get.query_async::<Option<String>>(c).await
                })
                .await
            })
            .await
    }

    async fn revoke(&self, sig: RecordRef<'_>, now: i64) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Revoke, || async move {
                let mut conn = self.conn().await?;
                let key = self.record_key(&sig);
                let mut call = self.revoke.pick(&self.memory).key(&key);
                call.arg(sig.fingerprint)
                    .arg(now)
                    .arg("")
                    .arg(compact_issued(sig.fingerprint).unwrap_or_default())
                    .arg(sig.issued_at);
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let before = scripted_status(&reply)?;
                if before == RecordState::Issued {
                    self.replicated(&conn, &key).await?;
                    let subject = reply.get(2).map_or("", String::as_str);
                    self.release(&mut conn, subject, &sig.key, 0).await;
                }
                Ok(before)
            })
            .await
    }

    async fn revoke_in_subject(
        &self,
        record: RecordKey<'_>,
        subject: &str,
        now: i64,
    ) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Revoke, || async move {
                if subject.is_empty() {
                    return Ok(RecordState::NotIssued);
                }
                let mut conn = self.conn().await?;
                let key = self.key_of(&record);
                let mut call = self.revoke.pick(&self.memory).key(&key);
                call.arg("").arg(now).arg(subject).arg("").arg(0);
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let before = scripted_status(&reply)?;
                if before == RecordState::Issued {
                    self.replicated(&conn, &key).await?;
                    self.release(&mut conn, subject, &record, 0).await;
                }
                Ok(before)
            })
            .await
    }

    async fn admit(&self, a: Admission<'_>) -> Result<bool, StoreError> {
        self.observed
            .run(StoreOp::Admit, || async move {
                let mut conn = self.conn().await?;
                let (outstanding, listing) = self.subject_keys(a.subject);
                let mut call = self.admit.key(outstanding);
                call.key(listing)
                    .key(self.subject_name_key(a.subject))
                    .arg(a.entry.outstanding_member())
                    .arg(a.entry.expire_time)
                    .arg(a.entry.member())
                    .arg(a.entry.issued_at)
                    .arg(a.expired_before)
                    .arg(a.cap)
                    .arg(a.ttl_seconds.max(1))
                    .arg(a.issued_before)
                    .arg(a.name);
                let added: i64 = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                Ok(added == 1)
            })
            .await
    }

    async fn discard(&self, record: RecordKey<'_>) -> Result<(), StoreError> {
        self.observed
            .run(StoreOp::Discard, || async move {
                let mut conn = self.conn().await?;
                let mut del = redis::cmd("DEL");
                del.arg(self.key_of(&record));
                self.bounded(&mut conn, async |c| del.query_async::<i64>(c).await)
                    .await
                    .map(|_| ())
            })
            .await
    }

    async fn list_subject(
        &self,
        subject: &str,
        after: Option<&ListCursor>,
        count: usize,
        expired_before: i64,
    ) -> Result<Vec<Listed>, StoreError> {
        self.observed
            .run(StoreOp::List, || async move {
                let mut conn = self.conn().await?;
                let mut call = self
                    .page
                    .pick(&self.memory)
                    .key(self.subject_keys(subject).1);
                call.arg(expired_before).arg(count);
                match after {
                    Some(c) => call.arg(1).arg(c.issued_at).arg(&c.member),
                    None => call.arg(0).arg(0).arg(""),
                };
                let page: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let entries: Vec<SubjectEntry> = page
                    .chunks_exact(2)
                    .filter_map(|pair| {
                        let issued_at = pair[1].parse::<f64>().ok()? as i64;
                        SubjectEntry::from_member(&pair[0], issued_at)
                    })
                    .collect();
                if entries.is_empty() {
                    return Ok(Vec::new());
                }
                // The records live in other slots: MGET, which the Cluster client splits by slot.
                let mut mget = redis::cmd("MGET");
                for e in &entries {
                    mget.arg(self.key_of(&e.key()));
                }
                let records: Vec<Option<String>> = self
                    .bounded(&mut conn, async |c| mget.query_async(c).await)
                    .await?;
                Ok(entries
                    .into_iter()
                    .zip(records)
                    .map(|(entry, text)| {
                        let state = text
                            .as_deref()
                            .and_then(Record::decode)
                            .map_or(RecordState::NotIssued, |r| r.state_in_subject(subject));
                        Listed { entry, state }
                    })
                    .collect())
            })
            .await
    }

    async fn charge_quotas(&self, group: &[Charge]) -> Result<QuotaOutcome, StoreError> {
        self.observed
            .run(StoreOp::Quota, || async move {
                let mut conn = self.conn().await?;
                let mut call = self.quota.prepare_invoke();
                for charge in group {
                    call.key(format!("{}{}", self.prefix, charge.key));
                    call.arg(charge.interval_ms).arg(charge.tolerance_ms);
                }
                let (index, wait_ms): (usize, u64) = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                match index.checked_sub(1).and_then(|i| group.get(i)) {
                    None => Ok(QuotaOutcome::Allowed),
                    Some(charge) => Ok(QuotaOutcome::Refused {
                        name: charge.name,
                        retry_after: Duration::from_millis(wait_ms),
                    }),
                }
            })
            .await
    }

    fn observe_with(&self, observer: std::sync::Arc<dyn StoreObserver>) {
        self.observed.set(observer);
    }

    fn accepts_issues(&self) -> Result<(), StoreError> {
        match self.memory.issue_gate() {
            IssueGate::Open => Ok(()),
            IssueGate::Full => Err(StoreError::new(
                FailureCause::Full,
                self.memory.full_message(),
            )),
            IssueGate::Evicting => Err(StoreError::new(
                FailureCause::Evicting,
                format!(
                    "nothing is issued: {}",
                    self.memory.evicting_message(&self.memory.status())
                ),
            )),
        }
    }

    fn unsafe_to_serve(&self) -> Option<String> {
        self.memory.unsafe_to_serve()
    }

    fn memory(&self) -> Option<crate::redis::MemoryStatus> {
        Some(self.memory.status())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observed
            .run_unspanned(StoreOp::Ping, async move {
                let mut conn = self.conn().await?;
                let ping = redis::cmd("PING");
                let answer = self
                    .bounded(&mut conn, async |c| ping.query_async::<String>(c).await)
                    .await;
                if answer.is_err() {
                    // Health checks ping on an otherwise idle connection too: one that does not answer
                    // a PING in time is replaced at once.
                    self.connector.failed(&conn, Failure::PingFailed);
                }
                answer.map(|_| ())
            })
            .await
    }
}
