//! Staying connected to Redis in its three deployments (see [`super::url`]).
//!
//! | deployment | connection |
//! |---|---|
//! | one server | one multiplexed connection, dialled in the background and redialled when it breaks or stops answering |
//! | Redis Cluster | `ClusterConnection`: follows MOVED/ASK and topology changes; connected in the background until the cluster answers, rebuilt when calls keep failing |
//! | Sentinel | one multiplexed connection to the master the sentinels name (followed by the sibling module `sentinel`), redialled like a single server's |
//!
//! A timeout is not an error to the redis crate: a connection to a peer that went silent
//! (a dead host, a stale conntrack entry) would be kept for as long as TCP retransmits, about
//! 15 minutes. So the store reports each call's fate ([`Connector::answered`],
//! [`Connector::failed`]), and the keeper task redials after [`REDIAL_AFTER_TIMEOUTS`]
//! timeouts in a row or a failed health `PING`. Credentials and TLS material come from the
//! configuration (files, environment), never only from the URL; for Sentinel they apply to
//! the data nodes, and to the sentinels only the TLS trust.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::TcpSettings;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisFuture, Value,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::RedisConfig;

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
    /// How long a `WAIT` may wait for replicas.
    wait: Duration,
}

#[derive(Clone)]
pub(super) enum Link {
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

    /// The connection itself, for commands routed by hand (the memory watch's `INFO` to every
    /// Cluster master).
    pub(super) fn link(&self) -> &Link {
        &self.link
    }

    /// Waits until `replicas` replicas acknowledged the write just made to `key` (Redis
    /// `WAIT`, bounded); answers how many did. Call it only after the write's reply arrived.
    ///
    /// One server or Sentinel: `WAIT` blocks its connection on the server, so one per call
    /// would serialize every call behind a replica round trip. Instead the calls waiting at a
    /// moment share one `WAIT` (group commit): it is sent after their requests reached this
    /// task, hence after their writes' replies, hence after their writes on this connection,
    /// which it therefore covers.
    ///
    /// Cluster: the `WAIT` goes to the master that owns `key`'s slot (over the connection the
    /// write used), not to every master: a shard that lost its replica must not stop the
    /// writes of every other shard.
    pub async fn replicated(&self, replicas: u32, key: &str) -> Result<i64, String> {
        if let Link::Cluster(cluster) = &self.link {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(replicas).arg(self.wait.as_millis() as u64);
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_key(key, SlotAddr::Master),
            ));
            let acked = cluster
                .clone()
                .route_command(cmd, route)
                .await
                .map_err(|e| e.to_string())?;
            return redis::from_redis_value::<i64>(acked).map_err(|e| e.to_string());
        }
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
pub(super) const MIN_REDIAL_GAP: Duration = Duration::from_millis(500);

/// TCP settings of every socket to a Redis node: `TCP_NODELAY` (commands are small writes
/// that must not wait for an ACK), keepalive probes that find a dead idle peer, and
/// `TCP_USER_TIMEOUT` so the kernel itself fails a connection whose sent data stays
/// unacknowledged (the default retransmission gives up only after ~15 minutes). These are a
/// backstop: the connector redials on the store's own timeouts long before.
pub(super) fn tcp_settings() -> TcpSettings {
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
pub(super) struct Shared {
    pub(super) current: ArcSwapOption<Conn>,
    /// Wakes the keeper task: redial (and, for Sentinel, ask where the master is) now.
    pub(super) redial: tokio::sync::Notify,
    /// Timeouts in a row on the current connection; any answer resets it.
    timeouts: AtomicU32,
    /// The connection broke (or failed a health PING): redial without the usual gap.
    urgent: AtomicBool,
    /// Wakes the calls waiting for a connection (see [`Connector::ready`]).
    installed: tokio::sync::Notify,
    /// The generation of the connection installed last, for what must look at every new
    /// connection at once (the memory watch: a reconnect may have reached another server).
    generations: tokio::sync::watch::Sender<u64>,
}

/// Keeps a connection to Redis up: what the store's calls use. A keeper task per deployment
/// dials, and redials when told the connection stopped answering.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

/// Patience for work off the request path (dialling, asking sentinels): it matters most when
/// the service is busiest (a failover under load), so it gets more than a call does.
pub(super) fn background_timeout(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(1))
}

/// Dials one node: a multiplexed connection whose calls are bounded by the store timeout.
pub(super) async fn dial(
    client: &Client,
    timeout: Duration,
) -> Result<MultiplexedConnection, String> {
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

pub(super) fn tls_certs(config: &RedisConfig) -> Option<redis::TlsCertificates> {
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
pub(super) fn node_client(info: ConnectionInfo, config: &RedisConfig) -> Result<Client, String> {
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

pub(super) fn tcp_addr(host: String, port: u16, tls: bool) -> ConnectionAddr {
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
    /// A connector with no connection yet, and its shared state for a keeper task.
    pub(super) fn unconnected() -> (Connector, Arc<Shared>) {
        let shared = Arc::new(Shared {
            current: ArcSwapOption::empty(),
            redial: tokio::sync::Notify::new(),
            timeouts: AtomicU32::new(0),
            urgent: AtomicBool::new(false),
            installed: tokio::sync::Notify::new(),
            generations: tokio::sync::watch::Sender::new(0),
        });
        (
            Connector {
                shared: shared.clone(),
            },
            shared,
        )
    }

    /// The connection to use now; `None` until the first dial.
    pub fn get(&self) -> Option<Conn> {
        self.shared.current.load().as_deref().cloned()
    }

    /// The connection to use now, waiting up to `within` for the first dial (a call that
    /// arrives as the service starts need not fail for being early).
    pub async fn ready(&self, within: Duration) -> Option<Conn> {
        // The common case, without touching the notifier's lock (shared by every call).
        if let Some(conn) = self.get() {
            return Some(conn);
        }
        let installed = self.shared.installed.notified();
        tokio::pin!(installed);
        // Registered before looking, so an install in between is not missed.
        installed.as_mut().enable();
        if let Some(conn) = self.get() {
            return Some(conn);
        }
        let _ = tokio::time::timeout(within, installed).await;
        self.get()
    }

    /// Changes each time a new connection is installed (a first dial, a redial, a failover).
    pub fn installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.generations.subscribe()
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
            Failure::PingFailed | Failure::Broken => {
                // Nothing more can come of this connection: no reason to wait.
                self.shared.urgent.store(true, Ordering::Relaxed);
                true
            }
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
    pub(super) fn install(&self, link: Link, promotable: Arc<AtomicU32>, wait: Duration) {
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
            wait,
        })));
        self.installed.notify_waiters();
        self.generations.send_replace(generation);
    }

    /// Whether the last redial request was for a broken connection (and clears it).
    pub(super) fn take_urgent(&self) -> bool {
        self.urgent.swap(false, Ordering::Relaxed)
    }

    /// Waits until told to redial: at once for a broken connection, else at most once per
    /// [`MIN_REDIAL_GAP`].
    pub(super) async fn redial_requested(&self) {
        let installed = tokio::time::Instant::now();
        self.redial.notified().await;
        if !self.take_urgent() {
            // Timeouts: the connection may be fine and Redis merely slow.
            tokio::time::sleep_until(installed + MIN_REDIAL_GAP).await;
        }
    }
}

/// Starts the keeper of one server at `url`.
pub(super) fn start_single(
    url: &str,
    config: &RedisConfig,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let client = single_client(url, config)?;
    tokio::spawn(keep_single(client, shared, config.timeout));
    Ok(())
}

/// Starts the keeper of the cluster whose seed nodes are `nodes`.
pub(super) fn start_cluster(
    nodes: Vec<String>,
    config: &RedisConfig,
    shared: Arc<Shared>,
) -> Result<(), String> {
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
    tokio::spawn(keep_cluster(client, shared, config.timeout));
    Ok(())
}

/// One server: dials (retrying until Redis answers), then dials again when the connection
/// breaks or keeps timing out: a timeout is not an error to the redis crate, so a connection
/// to a peer that went silent would otherwise be kept for as long as TCP retransmits.
async fn keep_single(client: Client, shared: Arc<Shared>, timeout: Duration) {
    let names = KeeperLogs {
        connected: "connected to Redis",
        replaced: "the Redis connection broke or stopped answering: dialled a new one",
        unreachable: "Redis",
    };
    keep_dialling(shared, timeout, names, || async {
        dial(&client, timeout).await.map(Link::Node)
    })
    .await
}

/// What a keeper logs when it connects, replaces a connection, or cannot reach Redis.
struct KeeperLogs {
    connected: &'static str,
    replaced: &'static str,
    unreachable: &'static str,
}

/// Dials with `dial` (retrying with backoff until it succeeds), installs the connection, and
/// dials again each time a redial is requested.
async fn keep_dialling<F, E>(
    shared: Arc<Shared>,
    timeout: Duration,
    logs: KeeperLogs,
    mut dial: impl FnMut() -> F,
) where
    F: Future<Output = Result<Link, E>>,
    E: std::fmt::Display,
{
    let mut retries = redial_backoff();
    loop {
        match dial().await {
            Ok(link) => {
                if shared.current.load().is_none() {
                    info!("{}", logs.connected);
                } else {
                    warn!("{}", logs.replaced);
                }
                shared.install(link, Arc::default(), wait_bound(timeout));
                retries = redial_backoff();
                shared.redial_requested().await;
            }
            Err(e) => {
                warn!("{} not reachable ({e}); retrying", logs.unreachable);
                tokio::time::sleep(retries.next().unwrap_or(MAX_BACKOFF)).await;
            }
        }
    }
}

/// The longest pause between two dials of a Redis that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Pauses between dials of a Redis that does not answer: exponential from 100 ms to
/// [`MAX_BACKOFF`], with jitter so a fleet of replicas does not dial in lockstep.
fn redial_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long a `WAIT` may wait for replicas: part of the call's store timeout, leaving room
/// for the write before it.
pub(super) fn wait_bound(timeout: Duration) -> Duration {
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
    let names = KeeperLogs {
        connected: "connected to Redis Cluster",
        replaced: "reconnected to Redis Cluster after failing calls",
        unreachable: "Redis Cluster",
    };
    keep_dialling(shared, timeout, names, || async {
        client.get_async_connection().await.map(Link::Cluster)
    })
    .await
}
