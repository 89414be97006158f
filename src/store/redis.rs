//! The Redis store: one string key per signature, shared by every replica (SPEC section 4).
//!
//! - Key `{prefix}sig:{secretId}:{random}`, value as in `record.rs`, expiring when the
//!   signature can no longer pass the clock check.
//! - Issue is `SET NX EX`; consume and revoke are Lua scripts, so each is one atomic step on
//!   the server, and two replicas racing on one signature cannot both win.
//! - The connection is a [`Connector`]'s: dialled in the background (the service starts while
//!   Redis is still coming up) and replaced when it breaks or keeps timing out; this store
//!   tells it how each call went. Every call is bounded by the store timeout and fails closed
//!   with [`StoreError::Unavailable`].
//! - Memory ([`RedisMemory`]): issuing stops (`STORE_FULL`) once Redis is within its memory
//!   reserve, and while its `maxmemory-policy` may evict records; the scripts that only
//!   change a record in place (consume, revoke) or only delete (a listing's cleanup) carry
//!   `#!lua flags=allow-oom` ([`OomScript`]), so they go on when Redis is over `maxmemory`.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::record::compact_issued;
use super::{
    Admission, ConsumeOutcome, ListCursor, Listed, QuotaOutcome, Record, RecordKey, RecordRef,
    RecordState, Store, StoreError, SubjectEntry, idempotency_token,
};
use crate::quota::Charge;
use crate::redis::{Conn, Connector, Failure, IssueGate, RedisConfig, RedisMemory};

/// Consume (flagged allow-oom: it only rewrites its one record, `SET ... KEEPTTL`; a compact
/// issued record grows by one small string): `issued` becomes `consumed` keeping the expiry
/// (and the subject digest, when the record has one); a repeat with the same idempotency
/// token answers the same success.
/// Returns `{outcome, at, subject digest}`. ARGV: fingerprint, now, idempotency token, compact
/// form of the fingerprint, issue time. A value of digits is the compact issued form
/// (`record.rs`), which has no subject.
const CONSUME_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub
if string.match(v, '^%d+$') then
  if v ~= ARGV[4] then return {'missing'} end
  state, fp, issued, changed, idem, sub = 'issued', ARGV[1], ARGV[5], ARGV[5], '', ''
else
  state, fp, issued, changed, idem, sub = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|?(%x*)$')
  if not state or fp ~= ARGV[1] then return {'missing'} end
end
if state == 'issued' then
  local tail = ''
  if sub ~= '' then tail = '|' .. sub end
  redis.call('SET', KEYS[1], 'v1|consumed|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. tail, 'KEEPTTL')
  return {'ok', ARGV[2], sub}
end
if state == 'consumed' and ARGV[3] ~= '' and idem == ARGV[3] then return {'ok', changed, sub} end
return {state, changed, sub}
"#;

/// Revoke (flagged allow-oom, as consume): `issued` becomes `revoked` keeping the expiry. The
/// record is named by the signature's fingerprint (ARGV[1], RevokeSignature) or by its
/// subject's digest (ARGV[3], RevokeSubject); an empty one is not compared, and the caller
/// always gives one of them.
/// ARGV[4] and ARGV[5]: the compact form of the fingerprint and the issue time, for a record
/// in the compact issued form (which has no subject). Returns `{state before, at, subject
/// digest}`.
const REVOKE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub
if string.match(v, '^%d+$') then
  if ARGV[3] ~= '' or v ~= ARGV[4] then return {'missing'} end
  state, fp, issued, changed, sub = 'issued', ARGV[1], ARGV[5], ARGV[5], ''
else
  state, fp, issued, changed, idem, sub = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|?(%x*)$')
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
return {state, changed, sub}
"#;

/// Admission to a subject's index, with the outstanding cap, in one atomic step on the
/// subject's slot. KEYS: the outstanding index (record name scored by `expireTime`), the
/// listing index (entry scored by issue time). ARGV: outstanding member, expireTime, listing
/// member, issued_at, expired-before, cap (0: none), TTL seconds, issued-before (entries
/// issued before it are past the longest validity). Returns 1 (added) or 0 (cap reached).
const ADMIT_LUA: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
local cap = tonumber(ARGV[6])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
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
/// deleting) expired entries (flagged allow-oom: it only reads and deletes). KEYS: the listing
/// index. ARGV: expired-before, count, cursor given (1/0), cursor score, cursor member. Returns `{member, score, member, score, ...}`.
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

/// A script that must run when Redis is over `maxmemory` under `noeviction`: it writes
/// nothing that grows memory beyond rewriting one record in place, or only deletes. Redis 7
/// runs it anyway when it starts with `#!lua flags=allow-oom`; Redis 6 refuses the shebang
/// itself, so the flagless text is sent until every master is known to run 7 (on Redis 6 such
/// a script is refused `OOM` over `maxmemory`, and the reserve is all the room consumes have).
/// Scripts that add keys or members (issue's admission, quotas) stay flagless: over
/// `maxmemory` they are refused, which refuses the issue `STORE_FULL`.
struct OomScript {
    flagless: Script,
    allow_oom: Script,
}

impl OomScript {
    fn new(body: &str) -> OomScript {
        OomScript {
            flagless: Script::new(body),
            // The bodies start with a newline, which ends the shebang line.
            allow_oom: Script::new(&format!("#!lua flags=allow-oom{body}")),
        }
    }

    /// The text to send: flagged where every master takes flags.
    fn pick(&self, memory: &RedisMemory) -> &Script {
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
    memory: Arc<RedisMemory>,
    prefix: String,
    timeout: Duration,
    min_replicas_ack: u32,
    consume: OomScript,
    revoke: OomScript,
    quota: Script,
    admit: Script,
    page: OomScript,
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

    /// After a record left `issued` (consume, revoke): its subject's cap no longer counts it.
    /// The index lives in another slot than the record, so this is a second step; when it
    /// fails, the entry stays until its expiry (the cap is then stricter, never looser).
    async fn release(&self, conn: &mut Conn, subject: &str, key: &RecordKey<'_>) {
        if subject.is_empty() {
            return;
        }
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.subject_keys(subject).0)
            .arg(format!("{}:{}", key.secret_id, key.random));
        if let Err(e) = self
            .bounded(conn, async |c| zrem.query_async::<i64>(c).await)
            .await
        {
            tracing::warn!(error = %e, "could not update the subject index; the entry stays until it expires");
        }
    }

    /// The connection, waiting (within the store timeout) for the first one.
    async fn conn(&self) -> Result<Conn, StoreError> {
        self.connector
            .ready(self.timeout)
            .await
            .ok_or_else(|| StoreError::Unavailable("not connected to Redis yet".into()))
    }

    /// Runs one call on `conn`, bounded by the store timeout, and tells the connector how it
    /// went: a connection that keeps timing out, breaks, or belongs to a demoted master is
    /// replaced. Any failure fails closed.
    async fn bounded<T>(
        &self,
        conn: &mut Conn,
        call: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let failure = match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(Ok(v)) => {
                self.connector.answered(conn);
                return Ok(v);
            }
            Ok(Err(e)) if e.code() == Some("OOM") => {
                // Over maxmemory under noeviction: the server answered, the connection is fine.
                self.connector.answered(conn);
                return Err(StoreError::Full(format!(
                    "Redis is over its maxmemory and refuses writes that grow memory ({e}); \
                     free memory or raise maxmemory"
                )));
            }
            Ok(Err(e)) => {
                let demoted =
                    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                if demoted || e.is_io_error() || e.is_connection_dropped() {
                    self.connector.failed(conn, Failure::Broken);
                } else if e.is_timeout() {
                    self.connector.failed(conn, Failure::Timeout);
                } else {
                    // The server answered (a script error, say): the connection is alive.
                    self.connector.answered(conn);
                }
                e.to_string()
            }
            Err(_) => {
                self.connector.failed(conn, Failure::Timeout);
                format!("no answer within {} ms", self.timeout.as_millis())
            }
        };
        Err(StoreError::Unavailable(failure))
    }

    /// With `--min-replicas-ack N`, waits (bounded) until N replicas acknowledged the writes
    /// made so far on `conn` (issue, consume, revoke); fewer means success cannot be promised.
    async fn replicated(&self, conn: &Conn, key: &str) -> Result<(), StoreError> {
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
                return Err(StoreError::Unavailable(format!(
                    "applied on the master, but whether replicas have it is unknown ({e}); the \
                     outcome is unknown until a retry with the same idempotency key"
                )));
            }
        };
        if acked < i64::from(needed) {
            return Err(StoreError::Unavailable(format!(
                "applied on the master but acknowledged by {acked} of {needed} replicas in time; \
                 the outcome is unknown until a retry with the same idempotency key"
            )));
        }
        Ok(())
    }
}

/// Reads a script's `{state, at}` reply.
fn scripted_status(reply: &[String]) -> Result<RecordState, StoreError> {
    let at = || -> Result<i64, StoreError> {
        reply
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Unavailable(format!("unexpected script reply {reply:?}")))
    };
    match reply.first().map(String::as_str) {
        Some("missing") => Ok(RecordState::NotIssued),
        Some("issued") => Ok(RecordState::Issued),
        Some("consumed") => Ok(RecordState::Consumed { at: at()? }),
        Some("revoked") => Ok(RecordState::Revoked { at: at()? }),
        _ => Err(StoreError::Unavailable(format!(
            "unexpected script reply {reply:?}"
        ))),
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
    }

    async fn status(&self, sig: RecordRef<'_>) -> Result<RecordState, StoreError> {
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
    }

    async fn consume(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        idempotency_key: &str,
    ) -> Result<ConsumeOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let key = self.record_key(&sig);
        let mut call = self.consume.pick(&self.memory).key(&key);
        call.arg(sig.fingerprint)
            .arg(now)
            .arg(idempotency_token(idempotency_key))
            .arg(compact_issued(sig.fingerprint).unwrap_or_default())
            .arg(sig.issued_at);
        let reply: Vec<String> = self
            .bounded(&mut conn, async |c| call.invoke_async(c).await)
            .await?;
        if reply.first().map(String::as_str) == Some("ok") {
            let at = reply.get(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                StoreError::Unavailable(format!("unexpected script reply {reply:?}"))
            })?;
            // Also on an idempotent repeat: success is only promised once replicated.
            self.replicated(&conn, &key).await?;
            let subject = reply.get(2).map_or("", String::as_str);
            self.release(&mut conn, subject, &sig.key).await;
            return Ok(ConsumeOutcome::Consumed { at });
        }
        scripted_status(&reply).map(ConsumeOutcome::Refused)
    }

    async fn revoke(&self, sig: RecordRef<'_>, now: i64) -> Result<RecordState, StoreError> {
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
            self.release(&mut conn, subject, &sig.key).await;
        }
        Ok(before)
    }

    async fn revoke_in_subject(
        &self,
        record: RecordKey<'_>,
        subject: &str,
        now: i64,
    ) -> Result<RecordState, StoreError> {
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
            self.release(&mut conn, subject, &record).await;
        }
        Ok(before)
    }

    async fn admit(&self, a: Admission<'_>) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let (outstanding, listing) = self.subject_keys(a.subject);
        let mut call = self.admit.key(outstanding);
        call.key(listing)
            .arg(a.entry.outstanding_member())
            .arg(a.entry.expire_time)
            .arg(a.entry.member())
            .arg(a.entry.issued_at)
            .arg(a.expired_before)
            .arg(a.cap)
            .arg(a.ttl_seconds.max(1))
            .arg(a.issued_before);
        let added: i64 = self
            .bounded(&mut conn, async |c| call.invoke_async(c).await)
            .await?;
        Ok(added == 1)
    }

    async fn discard(&self, record: RecordKey<'_>) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let mut del = redis::cmd("DEL");
        del.arg(self.key_of(&record));
        self.bounded(&mut conn, async |c| del.query_async::<i64>(c).await)
            .await
            .map(|_| ())
    }

    async fn list_subject(
        &self,
        subject: &str,
        after: Option<&ListCursor>,
        count: usize,
        expired_before: i64,
    ) -> Result<Vec<Listed>, StoreError> {
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
    }

    async fn charge_quotas(&self, group: &[Charge]) -> Result<QuotaOutcome, StoreError> {
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
    }

    fn accepts_issues(&self) -> Result<(), StoreError> {
        match self.memory.issue_gate() {
            IssueGate::Open => Ok(()),
            IssueGate::Full => Err(StoreError::Full(self.memory.full_message())),
            IssueGate::Evicting => Err(StoreError::Unavailable(format!(
                "nothing is issued: {}",
                self.memory.evicting_message(&self.memory.status())
            ))),
        }
    }

    fn unsafe_to_serve(&self) -> Option<String> {
        self.memory.unsafe_to_serve()
    }

    fn memory(&self) -> Option<crate::redis::MemoryStatus> {
        Some(self.memory.status())
    }

    async fn ping(&self) -> Result<(), StoreError> {
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
    }
}
