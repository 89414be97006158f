//! Test harness: real `redis-server` processes on free loopback ports, vod-signer servers
//! (in-process and as child processes), and helpers to read refusals.
#![allow(dead_code)]

pub mod pki;
pub mod proxy;
pub mod receiver;
pub mod topology;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use vod_signer::audit::NoEvents;
use vod_signer::clock::ManualClock;
use vod_signer::keys::KeyRing;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::reason::Reason;
use vod_signer::redis::RedisSettings;
use vod_signer::refusal::grpc_code;
use vod_signer::runner::assemble;
use vod_signer::server::{ServerSettings, serve};
use vod_signer::service::Settings;
use vod_signer::signature::{self, SecretKey, SignRequest, UploadPolicy};
use vod_signer::store::{MemoryStore, RedisStore, Store};

/// The test key: SecretId and SecretKey.
pub const SECRET_ID: &str = "AKIDtestkey";
/// The test key's SecretKey.
pub const SECRET_KEY: &str = "test-secret-key-0123456789abcdef";
/// A second key, for rotation tests.
pub const OTHER_ID: &str = "AKIDotherkey";
/// The second key's SecretKey.
pub const OTHER_KEY: &str = "other-secret-key-fedcba9876543210";

/// A port nobody listened on a moment ago. Another process may take it before it is used:
/// whatever starts a server on it checks that its own process answers (see
/// [`RedisServer`]), and picks again when not.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many ports a server started on a picked port tries before the test gives up.
const PORT_ATTEMPTS: usize = 5;

/// How long a `redis-server` may take to answer after it was started (AOF loading included).
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `process_id` line of an `INFO server` reply.
pub fn info_process_id(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the server started as `child` answers `cli(INFO server)` with its own process
/// id (and then `PING` with `PONG`). `Err` when the child exited (its port was taken, most
/// likely), when another process answers on its port, or after `within`.
pub fn wait_own_server(
    child: &mut Child,
    port: u16,
    within: Duration,
    cli: impl Fn(&[&str]) -> Option<String>,
) -> Result<(), String> {
    let pid = child.id();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!(
                "the server on port {port} exited at start ({status}); is the port taken?"
            ));
        }
        match cli(&["INFO", "server"]).as_deref().map(info_process_id) {
            Some(Some(answered)) if answered != pid => {
                return Err(format!(
                    "port {port} is answered by another server (pid {answered}, ours is {pid})"
                ));
            }
            Some(Some(_)) if cli(&["PING"]).as_deref() == Some("PONG") => return Ok(()),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server on port {port} did not answer within {within:?}"
            ));
        }
        // A bounded poll: the server says when it is up, nothing to wait on instead.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` child process on a free loopback port, killed on drop. At every start it
/// checks that the server answering on its port is its own process (`INFO server`'s
/// `process_id`): a port picked by [`free_port`] can be taken by another test's server in
/// between, and a test must never silently run against someone else's Redis.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
    extra_args: Vec<String>,
    cli_args: Vec<String>,
    /// Picks another port when the first is taken; `None`: the test chose the port.
    pick_port: Option<fn() -> u16>,
}

fn redis_binary() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if found.is_err() {
        panic!(
            "redis-server not found on PATH: the integration tests start real Redis servers. \
             Install it with `apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`."
        );
    }
    "redis-server"
}

impl RedisServer {
    fn new(
        pick_port: Option<fn() -> u16>,
        port: u16,
        persistent: bool,
        extra_args: &[&str],
        cli_args: &[&str],
    ) -> RedisServer {
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            persistent,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            cli_args: cli_args.iter().map(|s| s.to_string()).collect(),
            pick_port,
        };
        server.spawn_first();
        server
    }

    /// Starts a fresh, empty Redis that keeps nothing on disk.
    pub fn start() -> RedisServer {
        RedisServer::new(Some(free_port), free_port(), false, &[], &[])
    }

    /// Starts a fresh, empty Redis on `port` (fails if the port is taken).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::new(None, port, false, &[], &[])
    }

    /// Starts a Redis that keeps every acknowledged write on disk (AOF, fsync always), so a
    /// kill and restart brings its data back.
    pub fn start_persistent() -> RedisServer {
        RedisServer::new(Some(free_port), free_port(), true, &[], &[])
    }

    /// Starts a Redis with extra server arguments (appended, so they override), reached by
    /// `redis-cli` with `cli_args` (for TLS, credentials).
    pub fn start_configured(extra_args: &[&str], cli_args: &[&str]) -> RedisServer {
        RedisServer::start_configured_picking(free_port, extra_args, cli_args)
    }

    /// [`RedisServer::start_configured`] on a port from `pick_port` (tried again with another
    /// one when taken).
    pub fn start_configured_picking(
        pick_port: fn() -> u16,
        extra_args: &[&str],
        cli_args: &[&str],
    ) -> RedisServer {
        RedisServer::new(Some(pick_port), pick_port(), false, extra_args, cli_args)
    }

    /// [`RedisServer::start_configured`] on a given port (fails if the port is taken).
    pub fn start_configured_on(port: u16, extra_args: &[&str], cli_args: &[&str]) -> RedisServer {
        RedisServer::new(None, port, false, extra_args, cli_args)
    }

    /// Its data directory (for TLS files and the like).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and data directory.
    pub fn kill_and_restart(&mut self) {
        self.stop();
        self.spawn()
            .unwrap_or_else(|e| panic!("restarting redis-server: {e}"));
    }

    /// The first start: on a picked port, another port is tried when this one is taken.
    fn spawn_first(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            match (self.spawn(), self.pick_port) {
                (Ok(()), _) => return,
                (Err(e), Some(pick)) if attempt < PORT_ATTEMPTS => {
                    eprintln!("redis-server: {e}; trying another port");
                    self.port = pick();
                }
                (Err(e), _) => panic!("starting redis-server: {e}"),
            }
        }
    }

    /// Starts the process on `self.port` and waits until it, and not another server, answers.
    fn spawn(&mut self) -> Result<(), String> {
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let mut child = Command::new(redis_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(persistence)
            .args(
                self.extra_args
                    .iter()
                    .map(|a| a.replace("{port}", &self.port.to_string())),
            )
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let answered = wait_own_server(&mut child, self.port, REDIS_START_TIMEOUT, |args| {
            self.cli(args)
        });
        match answered {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` against this server; its trimmed output, or None when it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(&self.cli_args)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Kills the server (its data is gone: it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart_empty(&mut self) {
        self.stop();
        self.spawn()
            .unwrap_or_else(|e| panic!("restarting redis-server: {e}"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A keys directory with the two test keys; the first is active.
pub fn keys_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SECRET_ID), format!("{SECRET_KEY}\n")).unwrap();
    std::fs::write(dir.path().join(OTHER_ID), OTHER_KEY).unwrap();
    dir
}

/// The test key ring: both keys, the first active.
pub fn key_ring() -> KeyRing {
    KeyRing::new(
        [
            (SECRET_ID.to_owned(), SecretKey::new(SECRET_KEY.as_bytes())),
            (OTHER_ID.to_owned(), SecretKey::new(OTHER_KEY.as_bytes())),
        ],
        SECRET_ID,
    )
    .unwrap()
}

/// Which store a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Redis,
    /// A 3-master Redis Cluster.
    Cluster,
}

/// A vod-signer served in this process on a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub redis: Option<RedisServer>,
    pub metrics: Arc<vod_signer::metrics::Metrics>,
    pub cluster: Option<topology::RedisCluster>,
    /// The service's clock: it stands still until a test moves it.
    pub clock: ManualClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Fast health checks, so store-down tests finish quickly.
pub fn test_options() -> ServerSettings {
    ServerSettings {
        health_interval: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(5),
        ..ServerSettings::default()
    }
}

impl TestServer {
    /// Starts a server on `backend` with default settings.
    pub async fn start(backend: Backend) -> TestServer {
        TestServer::start_with(backend, Settings::default()).await
    }

    /// Starts a server on `backend` with `settings`.
    pub async fn start_with(backend: Backend, settings: Settings) -> TestServer {
        match backend {
            Backend::Memory => {
                TestServer::start_on(Arc::new(MemoryStore::new()), None, settings).await
            }
            Backend::Redis => {
                let redis = RedisServer::start();
                let store = Arc::new(redis_store_within(
                    &redis.url(),
                    "vodsigner:",
                    SEMANTIC_STORE_TIMEOUT,
                ));
                TestServer::start_on(store, Some(redis), settings).await
            }
            Backend::Cluster => {
                let cluster =
                    tokio::task::spawn_blocking(|| topology::RedisCluster::start(3, false))
                        .await
                        .unwrap();
                let store = Arc::new(redis_store_within(
                    &cluster.url(),
                    "vodsigner:",
                    SEMANTIC_STORE_TIMEOUT,
                ));
                let mut server = TestServer::start_on(store, None, settings).await;
                server.cluster = Some(cluster);
                server
            }
        }
    }

    /// Starts a server on `store`.
    pub async fn start_on<S: Store>(
        store: Arc<S>,
        redis: Option<RedisServer>,
        settings: Settings,
    ) -> TestServer {
        TestServer::start_configured(store, redis, settings, test_options()).await
    }

    /// Starts a server on `store` with server `options`.
    pub async fn start_configured<S: Store>(
        store: Arc<S>,
        redis: Option<RedisServer>,
        settings: Settings,
        options: ServerSettings,
    ) -> TestServer {
        TestServer::start_with_events(store, redis, settings, options, Arc::new(NoEvents)).await
    }

    /// Starts a server on `store` with server `options`, publishing to `events`.
    pub async fn start_with_events<S: Store>(
        store: Arc<S>,
        redis: Option<RedisServer>,
        settings: Settings,
        options: ServerSettings,
        events: Arc<dyn vod_signer::audit::EventLog>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = options.metrics.clone();
        let clock = ManualClock::new();
        let use_cases = assemble(
            store,
            key_ring().shared(),
            settings,
            events,
            metrics.clone(),
        )
        .with_clock(Arc::new(clock.clone()));
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            serve(listener, use_cases, options, shutdown).await.unwrap();
        });
        let server = TestServer {
            addr,
            redis,
            metrics,
            cluster: None,
            clock,
            stop: Some(tx),
            task: Some(task),
        };
        server.wait_serving(Duration::from_secs(10)).await;
        server
    }

    /// Now, Unix seconds, as the service sees it (its clock stands still until moved): the
    /// time to forge signatures' timestamps from, not the system's.
    pub fn now(&self) -> i64 {
        use vod_signer::clock::Clock as _;
        self.clock.now()
    }

    /// A client of this server.
    pub async fn client(&self) -> SignatureServiceClient<Channel> {
        connect(self.addr).await
    }

    /// Waits until the health service says SERVING.
    pub async fn wait_serving(&self, within: Duration) {
        wait_health(self.addr, "", true, within).await;
    }

    /// Stops the server and waits for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A Redis store for tests: the default 250 ms timeout, which the fault tests rely on.
pub fn redis_store(url: &str, prefix: &str) -> RedisStore {
    redis_store_within(url, prefix, Duration::from_millis(250))
}

/// A Redis store whose calls may take up to `timeout`.
pub fn redis_store_within(url: &str, prefix: &str, timeout: Duration) -> RedisStore {
    RedisStore::new(&RedisSettings {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        timeout,
        ..Default::default()
    })
    .unwrap()
}

/// The store timeout of the semantic suites (`TestServer::start` on Redis or Cluster): they
/// test what the service answers, not how fast, so a busy machine must not turn a racing
/// consume's refusal into `STORE_UNAVAILABLE`.
pub const SEMANTIC_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the server at `addr`.
pub async fn connect(addr: SocketAddr) -> SignatureServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SignatureServiceClient::new(channel)
}

/// The health status of `service` at `addr` (None when the call failed).
pub async fn health(addr: SocketAddr, service: &str) -> Option<i32> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    Some(reply.into_inner().status)
}

/// Waits until `service` at `addr` is SERVING (or NOT_SERVING when `serving` is false).
pub async fn wait_health(addr: SocketAddr, service: &str, serving: bool, within: Duration) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let want = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    } as i32;
    let deadline = Instant::now() + within;
    loop {
        if health(addr, service).await == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health of {service:?} at {addr} did not become {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the refusal's shape (code, message prefix, ErrorInfo) and returns its reason.
pub fn reason_of(status: &tonic::Status) -> Reason {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "vodsigner");
    let reason = Reason::from_token(&info.reason)
        .unwrap_or_else(|| panic!("unknown reason {}", info.reason));
    assert!(
        status
            .message()
            .starts_with(&format!("{}: ", reason.as_str())),
        "message {:?} does not start with {reason}",
        status.message()
    );
    assert_eq!(status.code(), grpc_code(reason), "code of {reason}");
    reason
}

/// Unwraps the refusal of a call that must be refused.
pub fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Reason {
    match result {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(status) => reason_of(&status),
    }
}

/// The code of a refusal.
pub fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("expected a refusal").code()
}

/// A parsed `/metrics` exposition (with `prometheus-parse`), and its text.
pub struct Exposition {
    pub text: String,
    parsed: prometheus_parse::Scrape,
}

impl Exposition {
    /// Parses an exposition.
    pub fn parse(text: String) -> Exposition {
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("a Prometheus exposition");
        Exposition { text, parsed }
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&prometheus_parse::Sample> {
        self.parsed.samples.iter().find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of the counter, gauge or untyped sample `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        match self.find(name, labels)?.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        }
    }

    /// The sum of the counter, gauge or untyped samples `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus_parse::Value;
        self.parsed
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// The histogram `name` with exactly `labels` (besides `le`): its buckets as
    /// (upper bound, cumulative count).
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Option<Vec<(f64, f64)>> {
        match &self.find(name, labels)?.value {
            prometheus_parse::Value::Histogram(b) => {
                Some(b.iter().map(|h| (h.less_than, h.count)).collect())
            }
            _ => None,
        }
    }
}

/// `GET /metrics` at `addr` (HTTP/1.1 with hyper-util's client), parsed.
pub async fn scrape(addr: SocketAddr) -> Exposition {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"));
    assert_eq!(
        response.status().as_u16(),
        200,
        "GET /metrics: {response:?}"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Exposition::parse(String::from_utf8(body.to_vec()).expect("a UTF-8 exposition"))
}

/// Waits until the unlabelled metric `name` at `addr` reads `value`, for at most `within`:
/// the gauges follow the health checks and the memory watch, each on its own period.
pub async fn wait_metric(addr: SocketAddr, name: &str, value: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = scrape(addr).await.value(name, &[]);
        if now == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {now:?}, not {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consume of `signature` without file size or idempotency key.
pub fn consume_req(signature: &str) -> vod_signer::proto::ConsumeSignatureRequest {
    consume_with(signature, "")
}

/// A consume of `signature` with an idempotency key.
pub fn consume_with(signature: &str, key: &str) -> vod_signer::proto::ConsumeSignatureRequest {
    vod_signer::proto::ConsumeSignatureRequest {
        signature: signature.to_owned(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

/// Whether a refusal is a replica shedding load (its queue full, or the wait for a slot run
/// out): a well-behaved client retries it after its `RetryInfo` delay, like a store outage.
/// While Redis is down each call holds its slot for the store timeout, so a burst queues.
pub fn is_shed(status: &tonic::Status) -> bool {
    reason_of(status) == Reason::RateLimited
        && status.get_details_error_info().is_some_and(|info| {
            info.metadata.get("quota").map(String::as_str) == Some("concurrency")
        })
}

/// Consumes with one idempotency key, retrying while the store is unavailable or the replica
/// sheds load (up to `within`): the success (its `consumed_at`) or the final refusal.
pub async fn consume_retrying(
    client: &mut SignatureServiceClient<Channel>,
    signature: &str,
    key: &str,
    within: Duration,
) -> Result<i64, Reason> {
    let deadline = Instant::now() + within;
    // Exponential backoff with jitter, as a well-behaved gateway retries.
    let mut backoff = Duration::from_millis(25);
    loop {
        match client.consume_signature(consume_with(signature, key)).await {
            Ok(r) => return Ok(r.into_inner().consumed_at),
            Err(s) => {
                let reason = reason_of(&s);
                let retry = reason == Reason::StoreUnavailable || is_shed(&s);
                if !retry || Instant::now() > deadline {
                    return Err(reason);
                }
                let at_least = s
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .unwrap_or_default();
                let jitter = rand::random_range(0..=backoff.as_millis() as u64);
                let wait = backoff / 2 + Duration::from_millis(jitter / 2);
                tokio::time::sleep(wait.max(at_least)).await;
                backoff = (backoff * 2).min(Duration::from_millis(400));
            }
        }
    }
}

/// Now, Unix seconds.
pub fn now() -> i64 {
    vod_signer::clock::unix_now()
}

/// A signature made by the test itself with the test key (never issued by the server).
pub fn forge(
    secret_id: &str,
    key: &str,
    t: i64,
    e: i64,
    random: u32,
    policy: &UploadPolicy,
) -> String {
    signature::sign(
        &SecretKey::new(key.as_bytes()),
        &SignRequest {
            secret_id,
            current_time_stamp: t,
            expire_time: e,
            random,
            one_time_valid: true,
            policy,
        },
    )
    .signature
}

/// The `vod-signer` binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vod-signer"))
}

/// `vod-signer serve` on a free loopback port, JSON logs, fast health checks, no `VOD_SIGNER_*`
/// or `RUST_LOG` inherited from the environment.
pub fn serve_command() -> Command {
    serve_command_of(&binary())
}

/// [`serve_command`] with the vod-signer binary at `program` (a copy another user may run).
pub fn serve_command_of(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--health-interval-ms",
        "100",
        "--log-level",
        "trace",
    ]);
    for (name, _) in std::env::vars() {
        if name.starts_with("VOD_SIGNER_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    // Through the environment, so a test can still pass --metrics-listen itself.
    cmd.env("VOD_SIGNER_METRICS_LISTEN", "127.0.0.1:0");
    cmd
}

/// A `vod-signer serve` child process; sent SIGKILL on drop.
pub struct ServerProcess {
    pub addr: SocketAddr,
    pub child: Child,
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The TCP ports process `pid` listens on, read from `/proc` (its socket inodes, matched
/// against the kernel's listening sockets): what a port scan of the process would find.
pub fn listening_ports(pid: u32) -> std::collections::BTreeSet<u16> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = std::collections::BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap_or("0");
                ports.insert(u16::from_str_radix(port, 16).unwrap_or(0));
            }
        }
    }
    ports
}

impl ServerProcess {
    /// Starts `vod-signer serve --listen 127.0.0.1:0 --log-format json` with `args`.
    pub fn start(keys_dir: &Path, args: &[&str]) -> ServerProcess {
        let mut cmd = serve_command();
        cmd.arg("--keys-dir")
            .arg(keys_dir)
            .args(["--active-key", SECRET_ID])
            .args(args);
        ServerProcess::spawn(cmd)
    }

    /// Spawns `cmd` (see [`serve_command`]) and waits until it serves.
    pub fn spawn(mut cmd: Command) -> ServerProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vod-signer");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "serving gRPC"
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("vod-signer did not start: {:?}", lines.lock().unwrap()));
        ServerProcess {
            addr: addr.parse().unwrap(),
            child,
            stderr: lines,
        }
    }

    /// The metrics address the process logged (waits for the line a little).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.logged_addr("serving metrics")
    }

    /// The `addr` of the first log line with `message` (polled for up to 10 s: the reader of
    /// the child's stderr may be behind).
    pub fn logged_addr(&self, message: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for line in self.stderr.lock().unwrap().iter() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && v["message"] == message
                {
                    return v["addr"].as_str().unwrap().parse().unwrap();
                }
            }
            assert!(Instant::now() < deadline, "no {message:?} log line");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (polling, up to `within`) until a log line contains every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// [`ServerProcess::wait_exit`] without blocking the test's runtime (whose client
    /// connections a draining server waits for).
    pub async fn exited(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "vod-signer did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "vod-signer did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every server process of the suite logs at trace level; none may log a secret.
        if !std::thread::panicking() {
            assert_no_secrets(&self.stderr.lock().unwrap());
        }
    }
}

/// Bearer tokens and passwords the tests use; none may ever be logged.
pub const TEST_SECRETS: [&str; 5] = [
    SECRET_KEY,
    OTHER_KEY,
    "ops-token-4f1d2a",
    "app-token-91ce07",
    "s3cret-redis-pw",
];

/// Fails if a line holds a test secret or a whole signature (a Base64 run that decodes to a
/// 20-byte tag followed by `secretId=`).
pub fn assert_no_secrets(lines: &[String]) {
    use base64::Engine as _;
    for line in lines {
        for secret in TEST_SECRETS {
            assert!(
                !line.contains(secret),
                "a secret leaked into the log: {line}"
            );
        }
        let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=';
        for run in line.split(|c: char| !is_b64(c)).filter(|r| r.len() >= 40) {
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(run) {
                assert!(
                    !(raw.len() > 20 && raw[20..].starts_with(b"secretId=")),
                    "a whole signature leaked into the log: {line}"
                );
            }
        }
    }
}

/// Runs each listed `async fn name(backend: Backend)` once per store, as the tests
/// `name::memory`, `name::redis` and `name::cluster` on a two-thread runtime:
/// `on_stores!(a, b)`. `on_stores!(stores: [memory Memory, redis Redis]; a, b)` picks the
/// stores, and `on_stores!(test: tokio::test; a, b)` the runtime (here the current thread).
#[macro_export]
macro_rules! on_stores {
    (@one $test:meta; [$($store:ident $variant:ident),*]; $name:ident) => {
        mod $name {
            $(
                #[$test]
                async fn $store() {
                    super::$name(super::Backend::$variant).await
                }
            )*
        }
    };
    (@each $test:meta; $stores:tt; $($name:ident),* $(,)?) => {
        $( $crate::on_stores!(@one $test; $stores; $name); )*
    };
    (stores: $stores:tt; $($name:ident),* $(,)?) => {
        $crate::on_stores!(@each tokio::test(flavor = "multi_thread", worker_threads = 2); $stores; $($name),*);
    };
    (test: $test:meta; $($name:ident),* $(,)?) => {
        $crate::on_stores!(@each $test; [memory Memory, redis Redis, cluster Cluster]; $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_stores!(stores: [memory Memory, redis Redis, cluster Cluster]; $($name),*);
    };
}
