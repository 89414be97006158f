//! Runs the gRPC server: `SignatureService`, `grpc.health.v1.Health` tied to the store,
//! reflection v1 and v1alpha, and a graceful shutdown on SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, error, info, warn};

use crate::auth::CallerPolicy;
use crate::config::{LogFormat, RuntimeFlavor, ServeArgs};
use crate::events::{EventLog, LogEvents, NoEvents};
use crate::keys::{KeyRing, SharedKeys};
use crate::metrics::{Instrumented, Metrics, serve_metrics};
use crate::proto::signature_service_server::SignatureServiceServer;
use crate::reason::Reason;
use crate::service::{Refusal, Settings, SharedPolicy, Signer};
use crate::signature::SecretKey;
use crate::store::{MemoryStore, RedisConfig, RedisStore, Store};
use crate::tls::{ReloadingAcceptor, TlsFiles};

/// The gRPC name of the signature service, as health checks name it.
pub const SERVICE_NAME: &str = <SignatureServiceServer<Signer<MemoryStore>> as NamedService>::NAME;

/// Accepted connections with `TCP_NODELAY`: without it every response waits ~40 ms for the
/// client's delayed ACK (Nagle), since a gRPC answer is several small writes. Serving from an
/// incoming stream drops tonic's own socket settings, so they are set here.
fn nodelay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Largest request message accepted (a real one is at most a few KiB; signatures are capped
/// at 16 KiB). Larger ones are refused before decoding, as `INVALID_REQUEST`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// tonic refuses a request above [`MAX_REQUEST_BYTES`] itself, before any service code runs,
/// with OUT_OF_RANGE and a message of its own. No refusal of this service travels as
/// OUT_OF_RANGE, so every such answer is that cap: it is answered like every other refusal,
/// with the reason token and an `ErrorInfo`.
fn typed_size_refusal<B>(mut response: http::Response<B>) -> http::Response<B> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if out_of_range {
        let refusal = Refusal::new(
            Reason::InvalidRequest,
            format!(
                "the request message is larger than the {} KiB limit; it was not decoded",
                MAX_REQUEST_BYTES / 1024
            ),
        );
        let headers = response.headers_mut();
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            headers.remove(name);
        }
        if let Err(e) = tonic::Status::from(refusal).add_header(headers) {
            error!("cannot type an oversize refusal: {e}");
        }
    }
    response
}

/// Sets up `tracing` on stderr: `RUST_LOG` if set, else `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|e| {
            eprintln!("vod-signer: bad --log-level {level:?} ({e}); using info");
            EnvFilter::new("info")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// What the server needs besides the service.
#[derive(Clone)]
pub struct ServerOptions {
    /// How often the store is pinged for health.
    pub health_interval: Duration,
    /// How long calls in flight may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Where the service's metrics are recorded.
    pub metrics: Arc<Metrics>,
    /// Whether gRPC server reflection is served.
    pub reflection: bool,
    /// Who may call what; empty: everyone may call everything.
    pub policy: SharedPolicy,
    /// TLS files of the gRPC port; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// How often the TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// A plaintext port serving only `grpc.health.v1.Health`, for Kubernetes' gRPC probes
    /// (which cannot speak TLS) when the main port does.
    pub health_listen: Option<SocketAddr>,
    /// Where audit events go (default: nowhere).
    pub events: Arc<dyn EventLog>,
}

impl ServerOptions {
    /// Defaults: health every second, 20 s drain, fresh metrics, reflection on.
    pub fn new() -> ServerOptions {
        ServerOptions {
            health_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(20),
            metrics: Arc::new(Metrics::new()),
            reflection: true,
            policy: SharedPolicy::default(),
            tls: None,
            tls_reload_interval: Duration::from_secs(30),
            health_listen: None,
            events: Arc::new(NoEvents),
        }
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions::new()
    }
}

/// `vod-signer serve`: builds the runtime, the keys and the store, and serves until SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let runtime = build_runtime(&args).map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_async(args))
}

fn build_runtime(args: &ServeArgs) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let flavor = match args.runtime {
        RuntimeFlavor::Auto if cores <= 2 => RuntimeFlavor::CurrentThread,
        RuntimeFlavor::Auto => RuntimeFlavor::MultiThread,
        other => other,
    };
    let mut builder = match flavor {
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if args.worker_threads > 0 {
                b.worker_threads(args.worker_threads);
            }
            b
        }
    };
    builder.enable_all().build()
}

async fn run_async(args: ServeArgs) -> Result<(), String> {
    crate::tls::install_crypto_provider();
    let keys = if args.dev {
        dev_keys()
    } else {
        let dir = args
            .keys
            .keys_dir
            .as_deref()
            .ok_or("--keys-dir (or VOD_SIGNER_KEYS_DIR) is required, or --dev")?;
        KeyRing::load_dir(dir, args.keys.active_key.as_deref()).map_err(|e| e.to_string())?
    };
    info!(secret_ids = ?keys.secret_ids().collect::<Vec<_>>(), active = keys.active_id(), "keys loaded");
    let keys = keys.shared();
    if args.default_ttl == 0 || args.default_ttl > args.max_ttl {
        return Err(format!(
            "--default-ttl {} must be 1 to --max-ttl {}",
            args.default_ttl, args.max_ttl
        ));
    }
    let policy = SharedPolicy::default();
    match &args.caller_policy {
        Some(path) => {
            let loaded = CallerPolicy::load(path)?;
            info!(callers = loaded.len(), "caller policy loaded");
            policy.store(Some(Arc::new(loaded)));
        }
        None => warn!(
            "no --caller-policy: every client that reaches the port may call every RPC, \
             IssueSignature included"
        ),
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        _ => None,
    };
    let settings = Settings {
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
        leeway: args.leeway,
        max_concurrent_calls: args.max_concurrent_calls,
        quotas: args.quotas()?,
        allow_missing_subject: args.quota_allow_missing_subject,
    };
    let options = ServerOptions {
        health_interval: Duration::from_millis(args.health_interval_ms),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        metrics: Arc::new(Metrics::new()),
        reflection: !args.no_reflection,
        policy: policy.clone(),
        tls,
        tls_reload_interval: Duration::from_secs(args.tls_reload_interval),
        health_listen: args.health_listen,
        events: Arc::new(NoEvents),
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    if let Some(addr) = args.metrics_addr()? {
        let metrics_listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        let metrics = options.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(metrics_listener, metrics, std::future::pending()).await {
                error!("metrics endpoint failed: {e}");
            }
        });
    }
    if !args.dev {
        // The SIGHUP handler is in place before the server says it serves, so an early
        // SIGHUP reloads rather than ends the process.
        #[cfg(unix)]
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                error!("cannot listen for SIGHUP ({e}): keys reload on the interval only");
                None
            }
        };
        #[cfg(not(unix))]
        let hangup = None;
        tokio::spawn(reload_keys_and_policy(
            args.clone(),
            keys.clone(),
            policy,
            options.metrics.clone(),
            hangup,
        ));
    }
    match &args.redis_url {
        Some(url) => {
            let store = Arc::new(RedisStore::new(&redis_config(&args, url)?)?);
            info!(store = "redis", "store configured");
            let mut options = options;
            if args.events_maxlen > 0 {
                options.events = Arc::new(store.events(args.events_maxlen));
            }
            serve(listener, store, keys, settings, options, shutdown_signal()).await
        }
        None => {
            warn!(
                "no --redis-url: using the embedded in-memory store. It serves ONE replica only: \
                 signatures are not shared across replicas and are forgotten on restart"
            );
            let store = Arc::new(MemoryStore::new());
            let mut options = options;
            if args.events_maxlen > 0 {
                options.events = Arc::new(LogEvents::new());
            }
            serve(listener, store, keys, settings, options, shutdown_signal()).await
        }
    }
    .map_err(|e| format!("server failed: {e}"))
}

/// The Redis settings from the flags; secrets come from files or the environment.
fn redis_config(args: &ServeArgs, url: &str) -> Result<RedisConfig, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let password = match (
        &args.redis_password_file,
        std::env::var("VOD_SIGNER_REDIS_PASSWORD"),
    ) {
        (Some(path), _) => {
            let bytes = read(path)?;
            let text =
                String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (None, Ok(p)) if !p.is_empty() => Some(p),
        _ => None,
    };
    let tls_client = match (&args.redis_tls_cert, &args.redis_tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(RedisConfig {
        url: url.to_owned(),
        key_prefix: args.key_prefix.clone(),
        timeout: Duration::from_millis(args.store_timeout_ms),
        username: args.redis_username.clone(),
        password,
        tls_ca: args.redis_tls_ca.as_deref().map(read).transpose()?,
        tls_client,
        min_replicas_ack: args.min_replicas_ack,
    })
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = std::convert::Infallible;

/// Re-reads the keys directory and the caller policy on SIGHUP and every
/// `--keys-reload-interval`.
///
/// Keys ([`KeyRing::reload_dir`]): what the directory holds now is what verifies, so a removed
/// key stops verifying at the next reload, always. Files that are not usable keys are skipped
/// (logged at error level, naming each); when the active key is not there, issuing is refused
/// with `NO_ACTIVE_KEY` (logged at error level naming the SecretId, and
/// `vodsigner_active_key_missing` is 1) until a reload finds it again. Only a directory that
/// cannot be listed keeps the previous keys. A caller policy that fails to load keeps the
/// previous one.
async fn reload_keys_and_policy(
    args: ServeArgs,
    keys: SharedKeys,
    policy: SharedPolicy,
    metrics: Arc<Metrics>,
    #[cfg_attr(not(unix), allow(unused_mut))] mut hangup: Option<Hangup>,
) {
    let Some(dir) = args.keys.keys_dir.clone() else {
        return;
    };
    metrics.set_active_key_missing(!keys.load().has_active());
    let interval = Duration::from_secs(args.keys_reload_interval);
    // What was last reported about skipped files, so an unchanged problem is not logged again
    // every interval (a SIGHUP always logs it).
    let mut reported_skipped: Vec<String> = Vec::new();
    loop {
        let timer = async {
            if interval.is_zero() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(interval).await
            }
        };
        let hup = async {
            match hangup.as_mut() {
                #[cfg(unix)]
                Some(s) => {
                    s.recv().await;
                }
                #[cfg(not(unix))]
                Some(never) => match *never {},
                None => std::future::pending::<()>().await,
            }
        };
        let by_signal = tokio::select! {
            () = timer => false,
            () = hup => true,
        };
        let old = keys.load_full();
        match KeyRing::reload_dir(&dir, args.keys.active_key.as_deref(), &old) {
            Ok(reloaded) => {
                let ring = reloaded.ring;
                let skipped: Vec<String> =
                    reloaded.skipped.iter().map(ToString::to_string).collect();
                if by_signal || skipped != reported_skipped {
                    for problem in &skipped {
                        error!("{problem}: skipped; the other keys are loaded");
                    }
                    if !reloaded.kept.is_empty() {
                        warn!(secret_ids = ?reloaded.kept, "key files that cannot be read keep their previous key");
                    }
                    reported_skipped = skipped;
                }
                let removed: Vec<&str> = old
                    .secret_ids()
                    .filter(|id| ring.get(id).is_none())
                    .collect();
                let added: Vec<&str> = ring
                    .secret_ids()
                    .filter(|id| old.get(id).is_none())
                    .collect();
                let changed =
                    old.active_id() != ring.active_id() || !old.secret_ids().eq(ring.secret_ids());
                if changed || by_signal {
                    info!(
                        secret_ids = ?ring.secret_ids().collect::<Vec<_>>(),
                        active = ring.active_id(),
                        ?added,
                        ?removed,
                        "keys reloaded"
                    );
                }
                let missing = !ring.has_active();
                let was_missing = !old.has_active();
                if missing && (by_signal || !was_missing || old.active_id() != ring.active_id()) {
                    error!(
                        active = ring.active_id(),
                        "active key {} is not in the keys directory: IssueSignature is refused \
                         with NO_ACTIVE_KEY until a reload finds it (or another key is made active); \
                         verify, consume and revoke go on with the remaining keys",
                        ring.active_id()
                    );
                } else if !missing && was_missing {
                    info!(
                        active = ring.active_id(),
                        "active key {} is loaded: issuing resumes",
                        ring.active_id()
                    );
                }
                metrics.set_active_key_missing(missing);
                keys.store(Arc::new(ring));
            }
            Err(e) => error!("keys directory reload failed ({e}); keeping the previous keys"),
        }
        if let Some(path) = &args.caller_policy {
            match CallerPolicy::load(path) {
                Ok(p) => policy.store(Some(Arc::new(p))),
                Err(e) => error!("caller policy reload failed ({e}); keeping the previous policy"),
            }
        }
        debug!(by_signal, "keys reload done");
    }
}

/// A fresh random key for `--dev`, printed once on stdout.
fn dev_keys() -> KeyRing {
    use rand::RngExt as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let secret_id = format!("AKIDdev{}", pick(12));
    let secret_key = pick(32);
    println!("vod-signer --dev: in-memory store and a fresh key, shown only this once:");
    println!("  secretId:  {secret_id}");
    println!("  secretKey: {secret_key}");
    let key = SecretKey::new(secret_key.as_bytes());
    KeyRing::new([(secret_id.clone(), key)], &secret_id).expect("the dev key is active")
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("interrupted: shutting down"),
        () = term => info!("SIGTERM: shutting down"),
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Pings the store every `interval`; health is SERVING exactly while it answers.
async fn watch_store<S: Store>(
    store: Arc<S>,
    reporter: HealthReporter,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut serving = None;
    loop {
        let result = store.ping().await;
        let ok = result.is_ok();
        metrics.set_store_up(ok);
        if let Some(records) = store.records() {
            metrics.set_store_records(records);
        }
        if serving != Some(ok) {
            match &result {
                Ok(()) => info!("store answers: health SERVING"),
                Err(e) => warn!("store does not answer ({e}): health NOT_SERVING"),
            }
            set_health(
                &reporter,
                if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                },
            )
            .await;
            serving = Some(ok);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains calls in flight.
pub async fn serve<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    keys: SharedKeys,
    settings: Settings,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let store = Arc::new(Instrumented::new(store, options.metrics.clone()));
    let watcher = tokio::spawn(watch_store(
        store.clone(),
        reporter.clone(),
        options.health_interval,
        options.metrics.clone(),
    ));

    let reflection = || {
        // The error-details set lets grpcurl decode the google.rpc.ErrorInfo of refusals.
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = if options.reflection {
        let v1 = reflection().build_v1().expect("descriptor sets are valid");
        let v1alpha = reflection()
            .build_v1alpha()
            .expect("descriptor sets are valid");
        (Some(v1), Some(v1alpha))
    } else {
        (None, None)
    };

    if let Some(addr) = options.health_listen {
        let probe_listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for health probes on {addr}: {e}"))?;
        info!(addr = %probe_listener.local_addr().unwrap_or(addr), "serving plaintext health probes");
        let probes = tonic::transport::Server::builder()
            .add_service(health.clone())
            .serve_with_incoming(nodelay(probe_listener));
        tokio::spawn(async move {
            if let Err(e) = probes.await {
                error!("health probe port failed: {e}");
            }
        });
    }
    let signer = Signer::new(
        store,
        keys,
        options.policy.clone(),
        settings,
        options.metrics.clone(),
    )
    .with_events(options.events.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(typed_size_refusal))
        .add_service(health)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(
            SignatureServiceServer::new(signer).max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    let stop = async {
        let _ = stop_rx.await;
    };
    type Serving<'a> =
        std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>>;
    let server: Serving<'_> = match &options.tls {
        Some(files) => {
            let acceptor = ReloadingAcceptor::start(files.clone(), options.tls_reload_interval)?;
            Box::pin(router.serve_with_incoming_shutdown(acceptor.incoming(listener), stop))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(nodelay(listener), stop)),
    };
    let mut server = server;
    if let Some(addr) = local {
        let tls = match &options.tls {
            None => "off",
            Some(TlsFiles {
                client_ca: None, ..
            }) => "on",
            Some(_) => "mutual",
        };
        info!(addr = %addr, tls, "serving gRPC");
    }

    tokio::select! {
        result = &mut server => {
            watcher.abort();
            return result.map_err(|e| e.to_string());
        }
        () = shutdown => {}
    }
    // Probes see NOT_SERVING first, so Kubernetes stops routing here while calls drain.
    watcher.abort();
    set_health(&reporter, ServingStatus::NotServing).await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(options.drain_timeout, server).await {
        Ok(result) => {
            info!("drained: exiting");
            result.map_err(|e| e.to_string())
        }
        Err(_) => {
            warn!(
                drain_timeout_s = options.drain_timeout.as_secs(),
                "calls still in flight at the drain timeout: exiting"
            );
            Ok(())
        }
    }
}
