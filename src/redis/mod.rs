//! Reaching Redis: the URL forms of its three deployments ([`url`]), building clients and
//! dialling (`dial`), a connection with `WAIT` as a group commit ([`connection`]), kept up
//! by a connector ([`connector`]) whose keeper tasks redial (`keeper`, and `sentinel` for a
//! Sentinel master), the memory watch ([`memory`], reading [`info`]), and why any of it failed
//! ([`Error`]). Used one way by the record store, the quota store and the audit stream; knows
//! nothing of signatures.

pub mod connection;
pub mod connector;
mod dial;
mod error;
pub mod info;
mod keeper;
pub mod memory;
mod sentinel;
pub mod url;

use std::time::Duration;

pub use self::connection::Conn;
pub use self::connector::{Connector, Failure};
pub use self::error::Error;
pub use self::memory::{IssueGate, MemoryStatus, RedisMemory};
pub use self::url::{Topology, UrlError};

impl Connector {
    /// Sets up the connection for `config` and starts the keeper task of its deployment;
    /// never waits for Redis (it may not be up yet).
    pub fn start(config: &RedisSettings) -> Result<Connector, Error> {
        let (connector, shared) = Connector::unconnected();
        match Topology::parse(&config.url)? {
            Topology::Single(url) => keeper::start_single(&url, config, shared)?,
            Topology::Cluster(nodes) => keeper::start_cluster(nodes, config, shared)?,
            Topology::Sentinel {
                sentinels,
                master,
                db,
                tls,
            } => sentinel::start_sentinel(sentinels, master, db, tls, config, shared)?,
        }
        Ok(connector)
    }
}

/// How to reach Redis, and what to accept of its memory settings. `Default` is the one place
/// the defaults of `--key-prefix`, `--store-timeout-ms` and `--redis-memory-reserve` are
/// written.
#[derive(Clone)]
pub struct RedisSettings {
    /// `--redis-url`: `redis://`, `rediss://`, `redis+cluster://`, `redis+sentinel://`.
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
    /// Replicas that must acknowledge an issue, consume or revoke (Redis `WAIT`) before success.
    pub min_replicas_ack: u32,
    /// Share of `maxmemory` kept free for consumes and revokes: issuing stops once a master's
    /// `used_memory` is within it (`--redis-memory-reserve`).
    pub memory_reserve: f64,
    /// Whether a `maxmemory-policy` that may evict records is accepted (a warning) rather than
    /// refused (health NOT_SERVING, no issuing) (`--allow-evicting-redis`).
    pub allow_evicting: bool,
    /// Whether records issued for a subject are written in the text form, which versions
    /// before 6 December 2026 read, instead of the compact one (`--text-subject-records`).
    pub text_subject_records: bool,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: String::new(),
            key_prefix: "vodsigner:".into(),
            timeout: Duration::from_millis(250),
            username: None,
            password: None,
            tls_ca: None,
            tls_client: None,
            min_replicas_ack: 0,
            memory_reserve: 0.1,
            allow_evicting: false,
            text_subject_records: false,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}
