//! Reaching Redis in its three deployments, and staying connected.
//!
//! | URL | deployment | connection |
//! |---|---|---|
//! | `redis://host:6379/0`, `rediss://...` | one server | `ConnectionManager`: lazy, reconnects by itself |
//! | `redis+cluster://h:p,h:p` (`rediss+cluster://`) | Redis Cluster, seed nodes | `ClusterConnection`: follows MOVED/ASK and topology changes; connected in the background until the cluster answers |
//! | `redis+sentinel://h:p,h:p/MASTER` (`rediss+sentinel://`) | Sentinel-managed replication | a `ConnectionManager` to the master the sentinels name, re-resolved on every health check and at once on `READONLY`, so a failover is followed |
//!
//! Credentials and TLS material come from the configuration (files, environment), never only
//! from the URL; for Sentinel they apply to the data nodes, and sentinels are reached without
//! credentials (but with TLS when the scheme says so).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use tracing::{info, warn};

use super::redis::RedisConfig;

/// Where Redis is, from `--redis-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server: the URL as the redis crate takes it.
    Single(String),
    /// Redis Cluster: seed nodes as `redis://h:p` (or `rediss://`) URLs.
    Cluster(Vec<String>),
    /// Sentinel: sentinel addresses, master name, database, TLS.
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<(String, u16)>,
        /// The monitored master's name.
        master: String,
        /// Database number.
        db: i64,
        /// Whether data nodes and sentinels speak TLS.
        tls: bool,
    },
}

fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty host in the node list".into());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            let port = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
            Ok((host.trim_matches(['[', ']']).to_owned(), port))
        }
        _ => Ok((s.to_owned(), default_port)),
    }
}

impl Topology {
    /// Parses `--redis-url`. Credentials in cluster and sentinel URLs are refused (use
    /// `--redis-username` and `--redis-password-file`).
    pub fn parse(url: &str) -> Result<Topology, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("a Redis URL needs a scheme, e.g. redis://")?;
        let no_userinfo = |rest: &str| -> Result<(), String> {
            if rest.split('/').next().unwrap_or("").contains('@') {
                Err("put Redis credentials in --redis-username / --redis-password-file, not in a cluster or sentinel URL".into())
            } else {
                Ok(())
            }
        };
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => Ok(Topology::Single(url.to_owned())),
            "redis+cluster" | "rediss+cluster" => {
                no_userinfo(rest)?;
                let hosts = rest.split('/').next().unwrap_or("");
                let plain = if scheme.starts_with("rediss") {
                    "rediss"
                } else {
                    "redis"
                };
                let nodes = hosts
                    .split(',')
                    .map(|h| {
                        host_port(h, 6379).map(|(host, port)| format!("{plain}://{host}:{port}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Topology::Cluster(nodes))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                no_userinfo(rest)?;
                let mut parts = rest.splitn(3, '/');
                let hosts = parts.next().unwrap_or("");
                let master = parts.next().unwrap_or("").to_owned();
                if master.is_empty() {
                    return Err(
                        "a sentinel URL names the master: redis+sentinel://h:p,h:p/MASTER_NAME"
                            .into(),
                    );
                }
                let db = match parts.next() {
                    None | Some("") => 0,
                    Some(db) => db
                        .parse()
                        .map_err(|_| format!("bad database number {db:?}"))?,
                };
                let sentinels = hosts
                    .split(',')
                    .map(|h| host_port(h, 26379))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Topology::Sentinel {
                    sentinels,
                    master,
                    db,
                    tls: scheme.starts_with("rediss"),
                })
            }
            other => Err(format!(
                "unknown Redis URL scheme {other:?}: use redis://, rediss://, redis+cluster://, redis+sentinel:// (or their rediss+ forms)"
            )),
        }
    }
}

/// A connection of any deployment, usable by the redis crate's commands and scripts.
#[derive(Clone)]
pub enum Conn {
    /// One server, or the current master of a sentinel group.
    Manager(ConnectionManager),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Keeps a connection to Redis up: what the store's calls use.
#[derive(Clone)]
pub struct Connector {
    current: Arc<ArcSwapOption<Conn>>,
    /// Wakes the sentinel watcher (a `READONLY` reply means the master moved) or the cluster
    /// keeper (calls keep failing) at once.
    resolve_now: Option<Arc<tokio::sync::Notify>>,
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

fn tls_certs(config: &RedisConfig) -> Option<redis::TlsCertificates> {
    if config.tls_ca.is_none() && config.tls_client.is_none() {
        return None;
    }
    Some(redis::TlsCertificates {
        client_tls: config
            .tls_client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: config.tls_ca.clone(),
    })
}

/// A client for one server: URL, then credentials and TLS material from the configuration.
fn single_client(url: &str, config: &RedisConfig) -> Result<Client, String> {
    let info = url
        .into_connection_info()
        .map_err(|e| format!("bad Redis URL: {}", e.to_string().replace(url, "<url>")))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    match tls_certs(config) {
        None => Client::open(info).map_err(|e| format!("bad Redis settings: {e}")),
        Some(certs) => {
            Client::build_with_tls(info, certs).map_err(|e| format!("bad Redis TLS settings: {e}"))
        }
    }
}

impl Connector {
    /// Sets up the connection for `config`; never waits for Redis (it may not be up yet).
    pub fn start(config: &RedisConfig) -> Result<Connector, String> {
        match Topology::parse(&config.url)? {
            Topology::Single(url) => {
                let client = single_client(&url, config)?;
                let manager =
                    ConnectionManager::new_lazy_with_config(client, manager_config(config.timeout))
                        .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
                Ok(Connector {
                    current: Arc::new(ArcSwapOption::from_pointee(Conn::Manager(manager))),
                    resolve_now: None,
                })
            }
            Topology::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .retries(2);
                if let Some(user) = &config.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.password(password);
                }
                if let Some(certs) = tls_certs(config) {
                    builder = builder.certs(certs);
                }
                let client = builder
                    .build()
                    .map_err(|e| format!("bad Redis Cluster settings: {e}"))?;
                let current = Arc::new(ArcSwapOption::empty());
                let notify = Arc::new(tokio::sync::Notify::new());
                tokio::spawn(keep_cluster_connection(
                    client,
                    current.clone(),
                    notify.clone(),
                ));
                Ok(Connector {
                    current,
                    resolve_now: Some(notify),
                })
            }
            Topology::Sentinel {
                sentinels,
                master,
                db,
                tls,
            } => {
                let addr = |(host, port): (String, u16)| {
                    if tls {
                        ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host, port)
                    }
                };
                let mut builder = SentinelClientBuilder::new(
                    sentinels.into_iter().map(addr),
                    &master,
                    SentinelServerType::Master,
                )
                .map_err(|e| format!("bad sentinel settings: {e}"))?
                .set_client_to_redis_db(db);
                if tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(user) = &config.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(certs) = tls_certs(config) {
                    builder = builder.set_client_to_redis_certificates(certs);
                }
                let client = builder
                    .build()
                    .map_err(|e| format!("bad sentinel settings: {e}"))?;
                let current = Arc::new(ArcSwapOption::empty());
                let notify = Arc::new(tokio::sync::Notify::new());
                tokio::spawn(follow_master(
                    client,
                    master,
                    current.clone(),
                    notify.clone(),
                    config.timeout,
                ));
                Ok(Connector {
                    current,
                    resolve_now: Some(notify),
                })
            }
        }
    }

    /// The connection to use now.
    pub fn get(&self) -> Option<Conn> {
        self.current.load().as_deref().cloned()
    }

    /// Tells the connector a call failed in a way a fresh view of the topology may cure
    /// (`READONLY` from a demoted master, timeouts, broken connections).
    pub fn refresh(&self) {
        if let Some(notify) = &self.resolve_now {
            notify.notify_one();
        }
    }
}

/// Connects to the cluster (retrying until it answers), then builds a fresh connection when
/// told calls keep failing (at most once a second). After a resharding under load the redis
/// crate's cluster connection was seen timing out every call for 20 s and more; a new one
/// reads the slot map afresh and works at once.
async fn keep_cluster_connection(
    client: redis::cluster::ClusterClient,
    current: Arc<ArcSwapOption<Conn>>,
    rebuild: Arc<tokio::sync::Notify>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match client.get_async_connection().await {
            Ok(conn) => {
                let first = current.load().is_none();
                current.store(Some(Arc::new(Conn::Cluster(conn))));
                if first {
                    info!("connected to Redis Cluster");
                } else {
                    info!("reconnected to Redis Cluster after failing calls");
                }
                delay = Duration::from_millis(100);
                rebuild.notified().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                warn!("Redis Cluster not reachable ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Asks the sentinels for the master every second (and at once when told it moved); when it
/// changed, switches to a connection to the new one.
async fn follow_master(
    mut client: SentinelClient,
    name: String,
    current: Arc<ArcSwapOption<Conn>>,
    wake: Arc<tokio::sync::Notify>,
    timeout: Duration,
) {
    let mut master: Option<ConnectionAddr> = None;
    loop {
        match tokio::time::timeout(timeout * 4, client.async_get_client()).await {
            Ok(Ok(found)) => {
                let addr = found.get_connection_info().addr().clone();
                if master.as_ref() != Some(&addr) {
                    match ConnectionManager::new_lazy_with_config(found, manager_config(timeout)) {
                        Ok(manager) => {
                            info!(master = %name, addr = %addr, "Redis master (from the sentinels)");
                            current.store(Some(Arc::new(Conn::Manager(manager))));
                            master = Some(addr);
                        }
                        Err(e) => warn!("cannot connect to the Redis master {addr}: {e}"),
                    }
                }
            }
            Ok(Err(e)) => warn!(master = %name, "the sentinels do not name a master ({e})"),
            Err(_) => warn!(master = %name, "the sentinels did not answer in time"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_deployments() {
        assert_eq!(
            Topology::parse("redis://r:6379/0").unwrap(),
            Topology::Single("redis://r:6379/0".into())
        );
        assert_eq!(
            Topology::parse("rediss+cluster://a:7000,b:7001,c").unwrap(),
            Topology::Cluster(vec![
                "rediss://a:7000".into(),
                "rediss://b:7001".into(),
                "rediss://c:6379".into()
            ])
        );
        assert_eq!(
            Topology::parse("redis+sentinel://s1:26379,s2/mymaster/2").unwrap(),
            Topology::Sentinel {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26379)],
                master: "mymaster".into(),
                db: 2,
                tls: false
            }
        );
        assert!(Topology::parse("redis+sentinel://s1:26379").is_err());
        assert!(Topology::parse("redis+cluster://user:pw@a:7000").is_err());
        assert!(Topology::parse("memcached://x").is_err());
        assert!(Topology::parse("redis+cluster://a:notaport").is_err());
    }
}
