//! Reaching Redis in its three deployments, and staying connected.
//!
//! | URL | deployment | connection |
//! |---|---|---|
//! | `redis://host:6379/0`, `rediss://...` | one server | one multiplexed connection, dialled in the background and redialled when it breaks or stops answering |
//! | `redis+cluster://h:p,h:p` (`rediss+cluster://`) | Redis Cluster, seed nodes | `ClusterConnection`: follows MOVED/ASK and topology changes; connected in the background until the cluster answers |
//! | `redis+sentinel://h:p,h:p/MASTER` (`rediss+sentinel://`) | Sentinel-managed replication | one multiplexed connection to the master the sentinels name, asked every second and at once on `READONLY`, so a failover is followed; redialled like a single server's |
//!
//! Credentials and TLS material come from the configuration (files, environment), never only
//! from the URL; for Sentinel they apply to the data nodes, and sentinels are reached without
//! credentials (but with TLS when the scheme says so).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisFuture, Value,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

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

/// A connection of any deployment, usable by the redis crate's commands and scripts. It
/// remembers which dial made it, so a failure reported on it after a redial is ignored.
#[derive(Clone)]
pub struct Conn {
    link: Link,
    generation: u64,
    /// Replicas that must acknowledge a write on this connection besides
    /// `--min-replicas-ack`: with Sentinel, every replica the sentinels could promote in
    /// place of this connection's master. Kept per master, so a call still finishing on the
    /// old master after a failover never counts the new master's replicas.
    promotable: Arc<AtomicU32>,
    /// The group commit of `WAIT` on this connection (see [`Conn::replicated`]).
    waits: mpsc::UnboundedSender<Waiter>,
}

#[derive(Clone)]
enum Link {
    /// One server, or the current master of a sentinel group. Never reconnects by itself
    /// (the connector replaces it), so a `WAIT` always runs on the socket its write used.
    Node(MultiplexedConnection),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

/// A call waiting for its write to reach replicas: how many, and where to answer.
struct Waiter {
    replicas: u32,
    answer: oneshot::Sender<Result<i64, String>>,
}

impl Conn {
    /// Replicas that must acknowledge a write on this connection, beyond what the operator
    /// asked for: with Sentinel, every replica the sentinels could promote in place of its
    /// master (so a failover cannot pick one that lacks an acknowledged write); 0 otherwise.
    pub fn promotable_replicas(&self) -> u32 {
        self.promotable.load(Ordering::Relaxed)
    }

    /// Waits until `replicas` replicas acknowledged every write this connection made so far
    /// (Redis `WAIT`, bounded by `wait`); answers how many did. Call it only after the write's
    /// reply arrived.
    ///
    /// `WAIT` blocks its connection on the server, so one per call would serialize every call
    /// behind a replica round trip. Instead the calls waiting at a moment share one `WAIT`
    /// (group commit): it is sent after their requests reached this task, hence after their
    /// writes' replies, hence after their writes on this connection, which it therefore covers.
    pub async fn replicated(&self, replicas: u32) -> Result<i64, String> {
        let (answer, reply) = oneshot::channel();
        self.waits
            .send(Waiter { replicas, answer })
            .map_err(|_| "the connection was closed".to_owned())?;
        reply
            .await
            .map_err(|_| "the connection was closed".to_owned())?
    }
}

/// Sends one `WAIT` for every group of calls that asked while the previous one was out.
async fn group_commit(
    mut link: Link,
    mut waiters: mpsc::UnboundedReceiver<Waiter>,
    wait: Duration,
) {
    let mut batch = Vec::new();
    while waiters.recv_many(&mut batch, usize::MAX).await > 0 {
        let replicas = batch.iter().map(|w| w.replicas).max().unwrap_or(0);
        let started = tokio::time::Instant::now();
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(wait.as_millis() as u64);
        // The server answers by `wait`; the margin covers the round trip.
        let acked = match tokio::time::timeout(wait * 2, cmd.query_async::<i64>(&mut link)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "WAIT did not answer within {} ms",
                (wait * 2).as_millis()
            )),
        };
        debug!(calls = batch.len(), replicas, took_us = started.elapsed().as_micros() as u64, acked = ?acked, "WAIT");
        for waiter in batch.drain(..) {
            let _ = waiter.answer.send(acked.clone());
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.link.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.link.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Node(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Node(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Node(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// What a failed call tells the connector about the connection it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the store timeout: the peer may be gone without a reset (a dead host,
    /// a stale conntrack entry), which TCP alone would notice only after ~15 minutes.
    Timeout,
    /// The health `PING` failed or did not answer in time: redial at once.
    PingFailed,
    /// The connection broke, or the node says it is no longer the master (`READONLY`).
    Broken,
}

/// Consecutive call timeouts on one connection after which it is dropped and redialled. One
/// slow call is not a dead connection; several in a row, with none answered, are.
pub const REDIAL_AFTER_TIMEOUTS: u32 = 3;
/// At most one redial per this interval, so a Redis that is merely slow is not hammered.
const MIN_REDIAL_GAP: Duration = Duration::from_millis(500);
/// How often the sentinels are asked where the master is and which replicas it has.
const SENTINEL_POLL: Duration = Duration::from_secs(1);

/// TCP settings of every socket to a Redis node: `TCP_NODELAY` (commands are small writes
/// that must not wait for an ACK), keepalive probes that find a dead idle peer, and
/// `TCP_USER_TIMEOUT` so the kernel itself fails a connection whose sent data stays
/// unacknowledged (the default retransmission gives up only after ~15 minutes). These are a
/// backstop: the connector redials on the store's own timeouts long before.
fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(Duration::from_secs(5));
    settings
}

/// The state every clone of a [`Connector`] shares.
struct Shared {
    current: ArcSwapOption<Conn>,
    /// Wakes the keeper task: redial (and, for Sentinel, ask where the master is) now.
    redial: tokio::sync::Notify,
    /// Timeouts in a row on the current connection; any answer resets it.
    timeouts: AtomicU32,
}

/// Keeps a connection to Redis up: what the store's calls use. A keeper task per deployment
/// dials, and redials when told the connection stopped answering.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

/// Patience for work off the request path (dialling, asking sentinels): it matters most when
/// the service is busiest (a failover under load), so it gets more than a call does.
fn background_timeout(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(1))
}

/// Dials one node: a multiplexed connection whose calls are bounded by the store timeout.
async fn dial(client: &Client, timeout: Duration) -> Result<MultiplexedConnection, String> {
    let patience = background_timeout(timeout);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(patience))
        .set_response_timeout(Some(timeout));
    match tokio::time::timeout(
        patience,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {} ms", patience.as_millis())),
    }
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

/// A client for one node, credentials and TLS material from the configuration.
fn node_client(info: ConnectionInfo, config: &RedisConfig) -> Result<Client, String> {
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    let info = info
        .set_redis_settings(settings)
        .set_tcp_settings(tcp_settings());
    match tls_certs(config) {
        None => Client::open(info).map_err(|e| format!("bad Redis settings: {e}")),
        Some(certs) => {
            Client::build_with_tls(info, certs).map_err(|e| format!("bad Redis TLS settings: {e}"))
        }
    }
}

/// A client for one server from its URL.
fn single_client(url: &str, config: &RedisConfig) -> Result<Client, String> {
    let info = url
        .into_connection_info()
        .map_err(|e| format!("bad Redis URL: {}", e.to_string().replace(url, "<url>")))?;
    node_client(info, config)
}

fn tcp_addr(host: String, port: u16, tls: bool) -> ConnectionAddr {
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
}

impl Connector {
    /// Sets up the connection for `config` and starts its keeper task; never waits for Redis
    /// (it may not be up yet).
    pub fn start(config: &RedisConfig) -> Result<Connector, String> {
        let shared = Arc::new(Shared {
            current: ArcSwapOption::empty(),
            redial: tokio::sync::Notify::new(),
            timeouts: AtomicU32::new(0),
        });
        match Topology::parse(&config.url)? {
            Topology::Single(url) => {
                let client = single_client(&url, config)?;
                tokio::spawn(keep_single(client, shared.clone(), config.timeout));
            }
            Topology::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .tcp_settings(tcp_settings())
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
                tokio::spawn(keep_cluster(client, shared.clone(), config.timeout));
            }
            Topology::Sentinel {
                sentinels,
                master,
                db,
                tls,
            } => {
                let links = sentinels
                    .into_iter()
                    .map(|(host, port)| {
                        let info = tcp_addr(host, port, tls).into_connection_info()?;
                        let info = info.set_tcp_settings(tcp_settings());
                        match tls_certs(config) {
                            Some(certs) if tls => Client::build_with_tls(info, certs),
                            _ => Client::open(info),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("bad sentinel settings: {e}"))?;
                let group = SentinelGroup {
                    sentinels: links.into_iter().map(|c| (c, None)).collect(),
                    name: master,
                    db,
                    tls,
                    config: config.clone(),
                };
                tokio::spawn(keep_sentinel_master(group, shared.clone()));
            }
        }
        Ok(Connector { shared })
    }

    /// The connection to use now; `None` until the first dial.
    pub fn get(&self) -> Option<Conn> {
        self.shared.current.load().as_deref().cloned()
    }

    /// A call on `conn` answered: it is alive.
    pub fn answered(&self, conn: &Conn) {
        if self.is_current(conn) {
            self.shared.timeouts.store(0, Ordering::Relaxed);
        }
    }

    /// A call on `conn` failed this way: redial when the connection looks dead. Reports
    /// about a connection that was already replaced are ignored.
    pub fn failed(&self, conn: &Conn, failure: Failure) {
        if !self.is_current(conn) {
            return;
        }
        let redial = match failure {
            Failure::Timeout => {
                self.shared.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= REDIAL_AFTER_TIMEOUTS
            }
            Failure::PingFailed | Failure::Broken => true,
        };
        if redial {
            self.shared.redial.notify_one();
        }
    }

    fn is_current(&self, conn: &Conn) -> bool {
        self.shared
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.generation == conn.generation)
    }
}

impl Shared {
    /// Makes `link` the connection calls use from now on. `WAIT`s on it are bounded by
    /// `wait`.
    fn install(&self, link: Link, promotable: Arc<AtomicU32>, wait: Duration) {
        let generation = self.current.load().as_ref().map_or(0, |c| c.generation + 1);
        let (waits, waiters) = mpsc::unbounded_channel();
        // Ends when the last clone of this connection is gone.
        tokio::spawn(group_commit(link.clone(), waiters, wait));
        self.timeouts.store(0, Ordering::Relaxed);
        self.current.store(Some(Arc::new(Conn {
            link,
            generation,
            promotable,
            waits,
        })));
    }

    /// Waits until told to redial, at most once per [`MIN_REDIAL_GAP`].
    async fn redial_requested(&self) {
        tokio::time::sleep(MIN_REDIAL_GAP).await;
        self.redial.notified().await;
    }
}

/// One server: dials (retrying until Redis answers), then dials again when the connection
/// breaks or keeps timing out: a timeout is not an error to the redis crate, so a connection
/// to a peer that went silent would otherwise be kept for as long as TCP retransmits.
async fn keep_single(client: Client, shared: Arc<Shared>, timeout: Duration) {
    let mut delay = Duration::from_millis(100);
    loop {
        match dial(&client, timeout).await {
            Ok(conn) => {
                if shared.current.load().is_none() {
                    info!("connected to Redis");
                } else {
                    warn!("the Redis connection broke or stopped answering: dialled a new one");
                }
                shared.install(Link::Node(conn), Arc::default(), wait_bound(timeout));
                delay = Duration::from_millis(100);
                shared.redial_requested().await;
            }
            Err(e) => {
                warn!("Redis not reachable ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// How long a `WAIT` may wait for replicas: part of the call's store timeout, leaving room
/// for the write before it.
fn wait_bound(timeout: Duration) -> Duration {
    (timeout * 3 / 4).max(Duration::from_millis(1))
}

/// Connects to the cluster (retrying until it answers), then builds a fresh connection when
/// told calls keep failing. After a resharding under load the redis crate's cluster
/// connection was seen timing out every call for 20 s and more; a new one reads the slot map
/// afresh and works at once.
async fn keep_cluster(
    client: redis::cluster::ClusterClient,
    shared: Arc<Shared>,
    timeout: Duration,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match client.get_async_connection().await {
            Ok(conn) => {
                if shared.current.load().is_none() {
                    info!("connected to Redis Cluster");
                } else {
                    info!("reconnected to Redis Cluster after failing calls");
                }
                shared.install(Link::Cluster(conn), Arc::default(), wait_bound(timeout));
                delay = Duration::from_millis(100);
                shared.redial_requested().await;
            }
            Err(e) => {
                warn!("Redis Cluster not reachable ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The sentinels of one master, and how to reach its data nodes.
struct SentinelGroup {
    /// Each sentinel's client and its open connection, if any.
    sentinels: Vec<(Client, Option<MultiplexedConnection>)>,
    name: String,
    db: i64,
    tls: bool,
    config: RedisConfig,
}

/// What one sentinel says of the master.
struct SentinelView {
    master: (String, u16),
    /// Replicas it could promote: up, linked to their master, priority above 0.
    promotable: u32,
}

impl SentinelGroup {
    /// Asks the sentinels in turn; the first that answers is believed (as Redis' own clients
    /// do). It is moved to the front, so the next poll asks it first.
    async fn ask(&mut self, timeout: Duration) -> Option<SentinelView> {
        for i in 0..self.sentinels.len() {
            match self.ask_one(i, timeout).await {
                Ok(view) => {
                    self.sentinels[..=i].rotate_right(1);
                    return Some(view);
                }
                Err(e) => {
                    self.sentinels[i].1 = None;
                    debug!(sentinel = i, "sentinel did not answer: {e}");
                }
            }
        }
        None
    }

    async fn ask_one(&mut self, i: usize, timeout: Duration) -> Result<SentinelView, String> {
        let (client, open) = &mut self.sentinels[i];
        let conn = match open {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                open.insert(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.name)
            .cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(&self.name);
        let (master, replicas): (Option<(String, u16)>, Vec<ReplicaFields>) =
            tokio::time::timeout(timeout, pipe.query_async(conn))
                .await
                .map_err(|_| "no answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
        let master = master.ok_or_else(|| format!("it knows no master {:?}", self.name))?;
        let master_name = format!("{}:{}", master.0, master.1);
        let promotable = replicas
            .iter()
            .filter(|r| r.get("name") != Some(&master_name) && promotable(r))
            .count() as u32;
        Ok(SentinelView { master, promotable })
    }

    fn master_client(&self, (host, port): (String, u16)) -> Result<Client, String> {
        let info = tcp_addr(host, port, self.tls).into_connection_info();
        let info = info.map_err(|e| e.to_string())?;
        let settings = info.redis_settings().clone().set_db(self.db);
        node_client(info.set_redis_settings(settings), &self.config)
    }
}

/// One replica as `SENTINEL REPLICAS` describes it: field name to value.
type ReplicaFields = HashMap<String, String>;

/// Whether a sentinel could promote this replica (`SENTINEL REPLICAS` fields): it is not
/// down, its link to its master is up, and its priority allows it. A replica being promoted
/// right now still counts until the sentinels name it the master: until then the service
/// writes to the old master, and the write must reach the replica that takes over.
fn promotable(replica: &ReplicaFields) -> bool {
    let flags = replica.get("flags").map_or("", String::as_str);
    let down = flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
    let linked = replica.get("master-link-status").map(String::as_str) == Some("ok");
    let priority = replica.get("slave-priority").map(String::as_str);
    !down && linked && priority != Some("0")
}

/// Asks the sentinels every second (and at once when told) where the master is and which
/// replicas could replace it. Switches to a new connection when the master moved, and also
/// when calls on the current one keep timing out although the address is the same (the redis
/// crate's Sentinel client follows neither by itself).
async fn keep_sentinel_master(mut group: SentinelGroup, shared: Arc<Shared>) {
    let timeout = group.config.timeout;
    let ask_timeout = background_timeout(timeout);
    let mut master: Option<(String, u16)> = None;
    // The current master's promotable replicas; a new master gets a counter of its own.
    let mut promotable = Arc::new(AtomicU32::new(0));
    let mut redial = false;
    let mut dial_failed = false;
    let mut last_dial = tokio::time::Instant::now();
    loop {
        match group.ask(ask_timeout).await {
            Some(view) => {
                let moved = master.as_ref() != Some(&view.master);
                if !moved {
                    let before = promotable.swap(view.promotable, Ordering::Relaxed);
                    if before != view.promotable {
                        info!(master = %group.name, promotable_replicas = view.promotable, "replicas that a failover could promote (each must acknowledge writes)");
                    }
                }
                if moved || redial {
                    let dialled = match group.master_client(view.master.clone()) {
                        Ok(client) => dial(&client, timeout).await,
                        Err(e) => Err(e),
                    };
                    match dialled {
                        Ok(conn) => {
                            let (host, port) = &view.master;
                            if moved {
                                info!(master = %group.name, addr = %format!("{host}:{port}"), promotable_replicas = view.promotable, "Redis master (from the sentinels)");
                            } else {
                                warn!(master = %group.name, "the connection to the Redis master stopped answering: dialled a new one");
                            }
                            if moved {
                                promotable = Arc::new(AtomicU32::new(view.promotable));
                            }
                            shared.install(
                                Link::Node(conn),
                                promotable.clone(),
                                wait_bound(timeout),
                            );
                            master = Some(view.master);
                            last_dial = tokio::time::Instant::now();
                        }
                        Err(e) => {
                            warn!("cannot connect to the Redis master: {e}");
                            // Again at the next poll, even if the sentinels name the same one.
                            dial_failed = true;
                        }
                    }
                }
            }
            None => warn!(master = %group.name, "no sentinel answered in time"),
        }
        let told = tokio::select! {
            () = tokio::time::sleep(SENTINEL_POLL) => false,
            () = shared.redial.notified() => true,
        };
        redial = told || std::mem::take(&mut dial_failed);
        if told {
            // At most one redial per gap; the sentinels are asked again at once all the same.
            tokio::time::sleep_until(last_dial + MIN_REDIAL_GAP).await;
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
