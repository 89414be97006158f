//! The Redis store: one string key per signature, shared by every replica (SPEC section 4).
//!
//! - Key `{prefix}sig:{secretId}:{random}`, value as in `record.rs`, expiring when the
//!   signature can no longer pass the clock check.
//! - Issue is `SET NX EX`; consume and revoke are Lua scripts, so each is one atomic step on
//!   the server, and two replicas racing on one signature cannot both win.
//! - The connection is a `ConnectionManager`: multiplexed, created lazily (the service starts
//!   while Redis is still coming up), and reconnecting by itself. Every call is bounded by the
//!   store timeout and fails closed with [`StoreError::Unavailable`].

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{ConsumeOutcome, Record, Signature, Status, Store, StoreError, idempotency_token};

/// Consume: `issued` becomes `consumed` keeping the expiry; a repeat with the same
/// idempotency token answers the same success. Returns `{outcome, at}`.
const CONSUME_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)$')
if not state or fp ~= ARGV[1] then return {'missing'} end
if state == 'issued' then
  redis.call('SET', KEYS[1], 'v1|consumed|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'KEEPTTL')
  return {'ok', ARGV[2]}
end
if state == 'consumed' and ARGV[3] ~= '' and idem == ARGV[3] then return {'ok', changed} end
return {state, changed}
"#;

/// Revoke: `issued` becomes `revoked` keeping the expiry. Returns the state before.
const REVOKE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|%x*$')
if not state or fp ~= ARGV[1] then return {'missing'} end
if state == 'issued' then
  redis.call('SET', KEYS[1], 'v1|revoked|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|', 'KEEPTTL')
  return {'issued', ARGV[2]}
end
return {state, changed}
"#;

/// How to reach Redis.
#[derive(Clone, Default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// Prefix of every key (default `vodsigner:`).
    pub key_prefix: String,
    /// Bound on every store call.
    pub timeout: Duration,
    /// ACL user name (overrides the URL's).
    pub username: Option<String>,
    /// Password (overrides the URL's); read from a file or the environment, never logged.
    pub password: Option<String>,
    /// PEM CA bundle that signs the Redis server's certificate (`rediss://`); without it, the
    /// system's trust store.
    pub tls_ca: Option<Vec<u8>>,
    /// PEM client certificate and key, for a Redis that requires them.
    pub tls_client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Builds the client: URL, then credentials and TLS material from the configuration.
fn client(config: &RedisConfig) -> Result<Client, String> {
    use redis::IntoConnectionInfo as _;
    let info = config.url.as_str().into_connection_info().map_err(|e| {
        format!(
            "bad Redis URL: {}",
            e.to_string().replace(&config.url, "<url>")
        )
    })?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    if config.tls_ca.is_none() && config.tls_client.is_none() {
        return Client::open(info).map_err(|e| format!("bad Redis settings: {e}"));
    }
    let certs = redis::TlsCertificates {
        client_tls: config
            .tls_client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: config.tls_ca.clone(),
    };
    Client::build_with_tls(info, certs).map_err(|e| format!("bad Redis TLS settings: {e}"))
}

/// Records in Redis, shared by all replicas.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    consume: Script,
    revoke: Script,
}

impl RedisStore {
    /// A store for `config`; connects lazily, so Redis need not be up yet.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, String> {
        let client = client(config)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        Ok(RedisStore {
            conn,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            consume: Script::new(CONSUME_LUA),
            revoke: Script::new(REVOKE_LUA),
        })
    }

    /// The Redis key of a signature's record.
    pub fn record_key(&self, sig: &Signature<'_>) -> String {
        format!(
            "{}sig:{}:{}",
            self.prefix, sig.key.secret_id, sig.key.random
        )
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// Reads a script's `{state, at}` reply.
fn scripted_status(reply: &[String]) -> Result<Status, StoreError> {
    let at = || -> Result<i64, StoreError> {
        reply
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Unavailable(format!("unexpected script reply {reply:?}")))
    };
    match reply.first().map(String::as_str) {
        Some("missing") => Ok(Status::NotIssued),
        Some("issued") => Ok(Status::Issued),
        Some("consumed") => Ok(Status::Consumed { at: at()? }),
        Some("revoked") => Ok(Status::Revoked { at: at()? }),
        _ => Err(StoreError::Unavailable(format!(
            "unexpected script reply {reply:?}"
        ))),
    }
}

impl Store for RedisStore {
    async fn insert_issued(
        &self,
        sig: Signature<'_>,
        now: i64,
        ttl_seconds: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let value = Record::issued(sig.fingerprint, now).encode();
        let mut set = redis::cmd("SET");
        set.arg(self.record_key(&sig))
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl_seconds.max(1));
        Ok(self
            .bounded(set.query_async::<Option<String>>(&mut conn))
            .await?
            .is_some())
    }

    async fn status(&self, sig: Signature<'_>) -> Result<Status, StoreError> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.record_key(&sig));
        let text = self
            .bounded(get.query_async::<Option<String>>(&mut conn))
            .await?;
        Ok(text
            .as_deref()
            .and_then(Record::decode)
            .map_or(Status::NotIssued, |r| r.status_for(sig.fingerprint)))
    }

    async fn consume(
        &self,
        sig: Signature<'_>,
        now: i64,
        idempotency_key: &str,
    ) -> Result<ConsumeOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = self.consume.key(self.record_key(&sig));
        call.arg(sig.fingerprint)
            .arg(now)
            .arg(idempotency_token(idempotency_key));
        let reply: Vec<String> = self.bounded(call.invoke_async(&mut conn)).await?;
        if reply.first().map(String::as_str) == Some("ok") {
            let at = reply.get(1).and_then(|s| s.parse().ok());
            return at.map(|at| ConsumeOutcome::Consumed { at }).ok_or_else(|| {
                StoreError::Unavailable(format!("unexpected script reply {reply:?}"))
            });
        }
        scripted_status(&reply).map(ConsumeOutcome::Refused)
    }

    async fn revoke(&self, sig: Signature<'_>, now: i64) -> Result<Status, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = self.revoke.key(self.record_key(&sig));
        call.arg(sig.fingerprint).arg(now);
        let reply: Vec<String> = self.bounded(call.invoke_async(&mut conn)).await?;
        scripted_status(&reply)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        self.bounded(ping.query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }
}
