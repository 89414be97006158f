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

use std::time::Duration;

use redis::Script;

use super::record::compact_issued;
use super::{
    ConsumeOutcome, QuotaOutcome, Record, RecordRef, RecordState, Store, StoreError,
    idempotency_token,
};
use crate::quota::Charge;
use crate::redis::{Conn, Connector, Failure, RedisConfig};

/// Consume: `issued` becomes `consumed` keeping the expiry; a repeat with the same
/// idempotency token answers the same success. Returns `{outcome, at}`. ARGV: fingerprint,
/// now, idempotency token, compact form of the fingerprint, issue time. A value of digits is
/// the compact issued form (`record.rs`).
const CONSUME_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem
if string.match(v, '^%d+$') then
  if v ~= ARGV[4] then return {'missing'} end
  state, fp, issued, changed, idem = 'issued', ARGV[1], ARGV[5], ARGV[5], ''
else
  state, fp, issued, changed, idem = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)$')
  if not state or fp ~= ARGV[1] then return {'missing'} end
end
if state == 'issued' then
  redis.call('SET', KEYS[1], 'v1|consumed|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'KEEPTTL')
  return {'ok', ARGV[2]}
end
if state == 'consumed' and ARGV[3] ~= '' and idem == ARGV[3] then return {'ok', changed} end
return {state, changed}
"#;

/// Revoke: `issued` becomes `revoked` keeping the expiry. Returns the state before. ARGV:
/// fingerprint, now, compact form of the fingerprint, issue time.
const REVOKE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed
if string.match(v, '^%d+$') then
  if v ~= ARGV[3] then return {'missing'} end
  state, fp, issued, changed = 'issued', ARGV[1], ARGV[4], ARGV[4]
else
  state, fp, issued, changed = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|%x*$')
  if not state or fp ~= ARGV[1] then return {'missing'} end
end
if state == 'issued' then
  redis.call('SET', KEYS[1], 'v1|revoked|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|', 'KEEPTTL')
  return {'issued', ARGV[2]}
end
return {state, changed}
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

/// Records in Redis, shared by all replicas.
pub struct RedisStore {
    connector: Connector,
    prefix: String,
    timeout: Duration,
    min_replicas_ack: u32,
    consume: Script,
    revoke: Script,
    quota: Script,
}

impl RedisStore {
    /// A store for `config`; connects in the background, so Redis need not be up yet.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, String> {
        Ok(RedisStore {
            connector: Connector::start(config)?,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            min_replicas_ack: config.min_replicas_ack,
            consume: Script::new(CONSUME_LUA),
            revoke: Script::new(REVOKE_LUA),
            quota: Script::new(QUOTA_LUA),
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
        let acked = match tokio::time::timeout(self.timeout, conn.replicated(needed, key)).await {
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
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let value = compact_issued(sig.fingerprint)
            .unwrap_or_else(|| Record::issued(sig.fingerprint, now).encode());
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
        let mut call = self.consume.key(&key);
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
            return Ok(ConsumeOutcome::Consumed { at });
        }
        scripted_status(&reply).map(ConsumeOutcome::Refused)
    }

    async fn revoke(&self, sig: RecordRef<'_>, now: i64) -> Result<RecordState, StoreError> {
        let mut conn = self.conn().await?;
        let key = self.record_key(&sig);
        let mut call = self.revoke.key(&key);
        call.arg(sig.fingerprint)
            .arg(now)
            .arg(compact_issued(sig.fingerprint).unwrap_or_default())
            .arg(sig.issued_at);
        let reply: Vec<String> = self
            .bounded(&mut conn, async |c| call.invoke_async(c).await)
            .await?;
        let before = scripted_status(&reply)?;
        if before == RecordState::Issued {
            self.replicated(&conn, &key).await?;
        }
        Ok(before)
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
