//! Serves the gRPC port: `SignatureService` behind its per-call layers,
//! `grpc.health.v1.Health` tied to the store, reflection v1 and v1alpha, an optional plaintext
//! health-only port, and a graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{error, info, warn};

use crate::api::layers::{AdmissionLimits, CallLayer};
use crate::api::{MAX_REQUEST_BYTES, SignatureApi};
use crate::auth::SharedPolicy;
use crate::metrics::Metrics;
use crate::notify::Delivery;
use crate::proto::signature_service_server::SignatureServiceServer;
use crate::service::UseCases;
use crate::shutdown::Shutdown;
use crate::store::{MemoryStore, Store};
use crate::tls::{ReloadingAcceptor, TlsError, TlsFiles};

/// The gRPC name of the signature service, as health checks name it.
pub const SERVICE_NAME: &str =
    <SignatureServiceServer<SignatureApi<MemoryStore>> as NamedService>::NAME;

/// Accepted connections with `TCP_NODELAY`: without it every response waits ~40 ms for the
/// client's delayed ACK (Nagle), since a gRPC answer is several small writes. Serving from an
/// incoming stream drops tonic's own socket settings, so they are set here.
fn nodelay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// What the server needs besides the use cases. `Default` is the one place the defaults of
/// these settings are written; the command line refers to them.
#[derive(Clone)]
pub struct ServerSettings {
    /// How often the store is pinged for health.
    pub health_interval: Duration,
    /// How long calls in flight may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Calls served at once; more wait for a slot (up to `max_queued_calls`, each at most
    /// `queue_timeout`), the rest are shed with `RATE_LIMITED`.
    pub max_concurrent_calls: usize,
    /// Calls that may wait for a slot; 0: shed every call over the limit at once.
    pub max_queued_calls: usize,
    /// How long a call may wait for a slot before it is shed.
    pub queue_timeout: Duration,
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
    /// Whether each call's span is exported as an OpenTelemetry server span (the caller's
    /// `traceparent` as its parent, the RPC semantic attributes); off: no work for it at all.
    pub traces: bool,
}

impl ServerSettings {
    /// Default of `--listen`: every interface, the gRPC port.
    pub const LISTEN: &str = "0.0.0.0:50051";
    /// Default of `--metrics-listen`.
    pub const METRICS_LISTEN: &str = "0.0.0.0:9090";
    /// Default of `--health-interval-ms`.
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
    /// Default of `--drain-timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
    /// Default of `--max-concurrent-calls`: enough for a replica's full throughput (Redis
    /// pipelines the calls of a connection), few enough that an admitted call is not slowed
    /// by the ones beside it (BENCHMARKS.md, "Overload").
    pub const MAX_CONCURRENT_CALLS: usize = 64;
    /// Default of `--max-queued-calls`.
    pub const MAX_QUEUED_CALLS: usize = 16384;
    /// Default of `--queue-timeout-ms`.
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default of `--tls-reload-interval`.
    pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            health_interval: ServerSettings::HEALTH_INTERVAL,
            drain_timeout: ServerSettings::DRAIN_TIMEOUT,
            max_concurrent_calls: ServerSettings::MAX_CONCURRENT_CALLS,
            max_queued_calls: ServerSettings::MAX_QUEUED_CALLS,
            queue_timeout: ServerSettings::QUEUE_TIMEOUT,
            metrics: Arc::new(Metrics::new()),
            reflection: true,
            policy: SharedPolicy::default(),
            tls: None,
            tls_reload_interval: ServerSettings::TLS_RELOAD_INTERVAL,
            health_listen: None,
            traces: false,
        }
    }
}

/// Why the server could not start serving, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `--health-listen`'s port could not be bound.
    #[error("cannot listen for health probes on {addr}")]
    HealthListen {
        /// The `--health-listen` address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS files of the gRPC port are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The gRPC transport failed while serving.
    #[error("the gRPC transport failed")]
    Transport(#[source] tonic::transport::Error),
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

/// Pings the store every `interval`; health is SERVING exactly while it answers and nothing
/// makes it unsafe to use (a Redis that may evict records, see [`Store::unsafe_to_serve`]).
async fn watch_store<S: Store>(
    store: Arc<S>,
    reporter: HealthReporter,
    interval: Duration,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    // Stopped mid-round too (a ping bounded only by the store timeout): once told, it must
    // not set health again.
    tokio::select! {
        biased;
        () = stop.requested() => {}
        () = watch_store_rounds(store, reporter, interval, metrics) => {}
    }
}

async fn watch_store_rounds<S: Store>(
    store: Arc<S>,
    reporter: HealthReporter,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut serving = None;
    loop {
        let result = store.ping().await;
        metrics.set_store_up(result.is_ok());
        if let Some(records) = store.record_count() {
            metrics.set_store_records(records);
        }
        if let Some(memory) = store.memory() {
            metrics.set_redis_memory(&memory);
        }
        let problem = match &result {
            Ok(()) => store.unsafe_to_serve(),
            Err(e) => Some(format!("store does not answer ({e})")),
        };
        let ok = problem.is_none();
        if serving != Some(ok) {
            match &problem {
                None => info!("store answers: health SERVING"),
                // Not a change: health starts NOT_SERVING (and Redis' settings unread).
                Some(problem) if serving.is_none() => info!("{problem}: health NOT_SERVING"),
                Some(problem) => warn!("{problem}: health NOT_SERVING"),
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

/// A name for this process among the replicas: the pod's name (`HOSTNAME`) and the process,
/// so each replica is its own consumer of the outbox and holder of the sweep's lease.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "vod-signer".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// The upload lifecycle's background work until shutdown: the abandonment sweep (one
/// replica at a time, by lease) and the backlog gauges.
async fn run_lifecycle<S: Store>(use_cases: Arc<UseCases<S>>, owner: String, stop: Shutdown) {
    let period = use_cases.settings().lifecycle.sweep_period();
    let mut failing = false;
    loop {
        // A period first: the store connects in the background as the server starts.
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.requested() => return,
        }
        let swept = use_cases.sweep_abandoned(&owner).await;
        let backlog = use_cases.backlog().await;
        match (swept, backlog) {
            (Ok(_), Ok(_)) if failing => {
                failing = false;
                info!("the upload lifecycle sweep works again");
            }
            (Err(e), _) | (_, Err(e)) if !failing => {
                failing = true;
                warn!("the upload lifecycle sweep failed ({e}); retrying every {period:?}");
            }
            _ => {}
        }
    }
}

/// Starts the upload lifecycle's background tasks: the sweep, and with `--notify-url` the
/// pusher.
fn start_lifecycle<S: Store>(
    use_cases: &Arc<UseCases<S>>,
    metrics: &Arc<Metrics>,
    tasks: &Shutdown,
) {
    let owner = replica_name();
    tasks.spawn(run_lifecycle(
        use_cases.clone(),
        owner.clone(),
        tasks.clone(),
    ));
    let lifecycle = &use_cases.settings().lifecycle;
    if let Delivery::Push(target) = &lifecycle.delivery {
        tasks.spawn(crate::notify::push::run(
            use_cases.store().clone(),
            target.clone(),
            lifecycle.max_age,
            owner,
            metrics.clone(),
            tasks.requested(),
        ));
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains calls in flight. Returns once
/// every task it spawned has ended (or, past the drain timeout again, logs the ones that
/// have not).
pub async fn serve<S: Store>(
    listener: TcpListener,
    use_cases: UseCases<S>,
    options: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let tasks = Shutdown::new();
    let drain_timeout = options.drain_timeout;
    let served = serve_until(listener, use_cases, options, shutdown, &tasks).await;
    // The background work stops after the calls: a push in flight finishes (bounded by its
    // timeout) and what is still queued waits in Redis for another replica.
    if !tasks.finish(drain_timeout).await {
        warn!(
            tasks = tasks.running(),
            "background tasks still running at the drain timeout: returning without them"
        );
    }
    served
}

async fn serve_until<S: Store>(
    listener: TcpListener,
    use_cases: UseCases<S>,
    options: ServerSettings,
    shutdown: impl Future<Output = ()>,
    tasks: &Shutdown,
) -> Result<(), ServeError> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let use_cases = Arc::new(use_cases);
    start_lifecycle(&use_cases, &options.metrics, tasks);
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    // Told before the others: health must stay NOT_SERVING through the drain.
    let health_watch = tasks.child();
    let watcher = tasks.spawn(watch_store(
        use_cases.store().clone(),
        reporter.clone(),
        options.health_interval,
        options.metrics.clone(),
        health_watch.clone(),
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
            .map_err(|source| ServeError::HealthListen { addr, source })?;
        info!(addr = %probe_listener.local_addr().unwrap_or(addr), "serving plaintext health probes");
        // Up through the drain, so probes see NOT_SERVING; down with the other tasks.
        let probes = tonic::transport::Server::builder()
            .add_service(health.clone())
            .serve_with_incoming_shutdown(nodelay(probe_listener), tasks.requested());
        tasks.spawn(async move {
            if let Err(e) = probes.await {
                error!("health probe port failed: {e}");
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let calls = CallLayer::new(
        options.metrics.clone(),
        options.policy.clone(),
        AdmissionLimits {
            concurrent: options.max_concurrent_calls,
            queued: options.max_queued_calls,
            wait: options.queue_timeout,
        },
    )
    .with_traces(options.traces);
    let router = tonic::transport::Server::builder()
        .layer(calls)
        .add_service(health)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(
            SignatureServiceServer::new(SignatureApi::new(use_cases.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    let stop = async {
        let _ = stop_rx.await;
    };
    type Serving<'a> =
        std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>>;
    let server: Serving<'_> = match &options.tls {
        Some(files) => {
            let acceptor =
                ReloadingAcceptor::start(files.clone(), options.tls_reload_interval, tasks)?;
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
            health_watch.request();
            return result.map_err(ServeError::Transport);
        }
        () = shutdown => {}
    }
    // Probes see NOT_SERVING first, so Kubernetes stops routing here while calls drain.
    health_watch.request();
    let _ = watcher.await;
    set_health(&reporter, ServingStatus::NotServing).await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(options.drain_timeout, server).await {
        Ok(result) => {
            info!("drained: exiting");
            result.map_err(ServeError::Transport)
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
