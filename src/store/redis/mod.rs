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

mod records;
mod scripts;
mod subjects;

use self::scripts::Scripts;

pub(super) use super::{
    Admission, AdmitOutcome, Awaiting, CompleteOutcome, ConsumeOutcome, FailureCause, ListCursor,
    Listed, Observed, QuotaOutcome, Quotas, Record, RecordKey, RecordRef, RecordState, Records,
    StoreError, StoreHealth, StoreObserver, StoreOp, SubjectEntry, Subjects, Sweep, Upload,
    idempotency_token, outbox,
};
use crate::quota::Charge;
use crate::redis::{Conn, Connector, Failure, IssueGate, RedisMemory, RedisSettings};

/// Why a Redis store cannot be set up (Redis being down is not one: it connects later).
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The connection settings are unusable (a bad URL, TLS material rustls refuses).
    #[error("cannot set up the Redis connection")]
    Connector(#[source] crate::redis::Error),
}

/// Records in Redis, shared by all replicas.
pub struct RedisStore {
    connector: Connector,
    pub(super) memory: Arc<RedisMemory>,
    prefix: String,
    timeout: Duration,
    min_replicas_ack: u32,
    /// Records issued for a subject in the text form (`--text-subject-records`).
    text_subject_records: bool,
    /// Whether every key lives on one server (one Redis, or a Sentinel group's master), so
    /// that one transaction may hold a record and its subject's index (not on Cluster).
    one_node: bool,
    /// Every script, loaded once.
    pub(super) scripts: Scripts,
    pub(super) observed: Observed,
}

impl RedisStore {
    /// A store for `config`; connects in the background, so Redis need not be up yet.
    pub fn new(config: &RedisSettings) -> Result<RedisStore, RedisStoreError> {
        let connector = Connector::start(config).map_err(RedisStoreError::Connector)?;
        Ok(RedisStore {
            memory: RedisMemory::watch(&connector, config),
            connector,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            min_replicas_ack: config.min_replicas_ack,
            text_subject_records: config.text_subject_records,
            one_node: !matches!(
                crate::redis::Topology::parse(&config.url),
                Ok(crate::redis::Topology::Cluster(_))
            ),
            scripts: Scripts::new(),
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
        let (head, tail) = self.outstanding_key_around();
        (
            format!("{head}{subject}{tail}"),
            format!("{}sub:{{{subject}}}:all", self.prefix),
        )
    }

    /// The outstanding set's key around the subject's digest: (before it, after it). The
    /// record scripts build it from these on one server (`release` in `record.lua`).
    fn outstanding_key_around(&self) -> (String, &'static str) {
        (format!("{}sub:{{", self.prefix), "}:out")
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
                    if e.code() == Some("NOREPLICAS") {
                        // A master that lost its replicas (`min-replicas-to-write`): with
                        // Sentinel, most likely the old master of a failover under way.
                        self.connector.failed(conn, Failure::NoReplicas);
                    }
                    if refused_over_maxmemory(&e) {
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
                    Ok(Err(e)) => e.to_string(),
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
            // Replicas are missing: with Sentinel, the master may be moving, or a replica gone
            // that the sentinels no longer count (asked now, so the count follows quickly).
            self.connector.failed(conn, Failure::NoReplicas);
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

impl Quotas for RedisStore {
    async fn charge_quotas(&self, group: &[Charge]) -> Result<QuotaOutcome, StoreError> {
        self.observed
            .run(StoreOp::Quota, || async move {
                let mut conn = self.conn().await?;
                let mut call = self.scripts.quota.prepare_invoke();
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
}

impl StoreHealth for RedisStore {
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
    fn observe_with(&self, observer: std::sync::Arc<dyn StoreObserver>) {
        self.observed.set(observer);
    }
}

/// Whether Redis refused a write for being over `maxmemory` (`OOM`): the command itself, or
/// one queued in a transaction, which Redis then aborts (`EXECABORT`).
fn refused_over_maxmemory(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, s)| s.code() == "OOM"))
}
