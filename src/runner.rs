//! The composition root of `vod-signer serve`: from the command line it builds the runtime,
//! the keys, the caller policy, TLS, the backend (record store and audit log) and the server,
//! and runs them until SIGTERM. Every default lives with what it configures (`Settings`,
//! `ServerSettings`, `RedisSettings`); the command line refers to them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::audit::{EventLog, LogEvents, NoEvents, RedisEvents};
use crate::auth::{CallerPolicy, PolicyFileError, SharedPolicy};
use crate::config::{ConfigError, RuntimeFlavor, ServeArgs};
use crate::keys::{KeyError, KeyRing, SharedKeys};
use crate::metrics::{Metrics, serve_metrics};
use crate::redis::RedisSettings;
use crate::reload::{self, Sources};
use crate::report::Chain;
use crate::server::{ServeError, ServerSettings, serve, shutdown_signal};
use crate::service::{Settings, UseCases};
use crate::shutdown::Shutdown;
use crate::signature::SecretKey;
use crate::store::{MemoryStore, RedisStore, RedisStoreError, Store};
use crate::tls::TlsFiles;

/// Why `serve` did not start, or stopped other than on a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The tokio runtime could not be built.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    /// Serving needs keys, from a directory or made up by `--dev`.
    #[error("--keys-dir (or VOD_SIGNER_KEYS_DIR) is required, or --dev")]
    NoKeysDir,
    /// The keys directory is unusable.
    #[error("cannot load keys")]
    Keys(#[from] KeyError),
    /// The default TTL is outside what the maximum allows.
    #[error("--default-ttl {default_ttl} must be 1 to --max-ttl {max_ttl}")]
    DefaultTtl {
        /// `--default-ttl`.
        default_ttl: u64,
        /// `--max-ttl`.
        max_ttl: u64,
    },
    /// Flags that do not make a configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--caller-policy` is unusable.
    #[error(transparent)]
    Policy(#[from] PolicyFileError),
    /// The gRPC port could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// `--listen`.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The metrics port could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    MetricsListen {
        /// `--metrics-listen`.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file named by a Redis flag could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// Path of the file, as given to the flag.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `--redis-password-file` is not text.
    #[error("{} is not UTF-8", path.display())]
    NotUtf8 {
        /// Path of the file, as given to the flag.
        path: std::path::PathBuf,
        /// Where the bytes stop being UTF-8.
        source: std::string::FromUtf8Error,
    },
    /// The Redis settings are unusable.
    #[error(transparent)]
    RedisStore(#[from] RedisStoreError),
    /// The server failed to start or stopped on its own.
    #[error("cannot serve")]
    Serve(#[from] ServeError),
}

/// `vod-signer serve`: builds the runtime, the keys and the store, and serves until SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), RunError> {
    let runtime = build_runtime(&args).map_err(RunError::Runtime)?;
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

/// The use cases over `store`, with its operations measured into `metrics`.
pub fn assemble<S: Store>(
    store: Arc<S>,
    keys: SharedKeys,
    settings: Settings,
    events: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
) -> UseCases<S> {
    store.observe_with(metrics.clone());
    UseCases::new(store, keys, settings)
        .with_events(events)
        .with_lifecycle_observer(metrics)
}

/// The use cases' settings from the flags.
fn settings(args: &ServeArgs) -> Result<Settings, RunError> {
    if args.default_ttl == 0 || args.default_ttl > args.max_ttl {
        return Err(RunError::DefaultTtl {
            default_ttl: args.default_ttl,
            max_ttl: args.max_ttl,
        });
    }
    Ok(Settings {
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
        leeway: args.leeway,
        quotas: args.quotas()?,
        allow_missing_subject: args.quota_allow_missing_subject,
        max_outstanding_per_subject: args.max_outstanding_per_subject,
        lifecycle: args.lifecycle()?,
    })
}

/// The caller policy from `--caller-policy`; none lets every caller call everything.
fn caller_policy(args: &ServeArgs) -> Result<SharedPolicy, RunError> {
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
    Ok(policy)
}

/// The server's options from the flags.
fn server_settings(args: &ServeArgs, policy: SharedPolicy) -> ServerSettings {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        _ => None,
    };
    ServerSettings {
        health_interval: Duration::from_millis(args.health_interval_ms),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        max_concurrent_calls: args.max_concurrent_calls,
        max_queued_calls: args.max_queued_calls,
        queue_timeout: Duration::from_millis(args.queue_timeout_ms),
        metrics: Arc::new(Metrics::new()),
        reflection: !args.no_reflection,
        policy,
        tls,
        tls_reload_interval: Duration::from_secs(args.tls_reload_interval),
        health_listen: args.health_listen,
        traces: args.otlp_endpoint().is_some(),
    }
}

async fn run_async(args: ServeArgs) -> Result<(), RunError> {
    crate::tls::install_crypto_provider();
    let keys = if args.dev {
        dev_keys()
    } else {
        let dir = args.keys.keys_dir.as_deref().ok_or(RunError::NoKeysDir)?;
        KeyRing::load_dir(dir, args.keys.active_key.as_deref())?
    };
    info!(secret_ids = ?keys.secret_ids().collect::<Vec<_>>(), active = keys.active_id(), "keys loaded");
    let keys = keys.shared();
    let settings = settings(&args)?;
    let policy = caller_policy(&args)?;
    let options = server_settings(&args, policy.clone());
    let drain_timeout = options.drain_timeout;
    // The composition root's own tasks; the server's are its own.
    let tasks = Shutdown::new();
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: args.listen,
            source,
        })?;
    if let Some(addr) = args.metrics_addr()? {
        let metrics_listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::MetricsListen { addr, source })?;
        let metrics = options.metrics.clone();
        let stop = tasks.requested();
        tasks.spawn(async move {
            if let Err(e) = serve_metrics(metrics_listener, metrics, stop).await {
                error!("metrics endpoint failed: {}", Chain(&e));
            }
        });
    }
    if let (false, Some(dir)) = (args.dev, &args.keys.keys_dir) {
        let sources = Sources {
            keys_dir: dir.clone(),
            active_key: args.keys.active_key.clone(),
            caller_policy: args.caller_policy.clone(),
            interval: Duration::from_secs(args.keys_reload_interval),
        };
        // Listened for now, before the server says it serves.
        let hangup = reload::listen_for_hangup();
        tasks.spawn(reload::reload_keys_and_policy(
            sources,
            keys.clone(),
            policy,
            options.metrics.clone(),
            hangup,
            tasks.requested(),
        ));
    }
    let metrics = options.metrics.clone();
    let served = match &args.redis_url {
        Some(url) => {
            let store = Arc::new(RedisStore::new(&redis_settings(&args, url)?)?);
            info!(store = "redis", "store configured");
            let events: Arc<dyn EventLog> = if args.events_maxlen > 0 {
                Arc::new(RedisEvents::start(
                    store.connector().clone(),
                    format!("{}events", store.prefix()),
                    args.events_maxlen,
                    Duration::from_millis(args.store_timeout_ms),
                    &tasks,
                ))
            } else {
                Arc::new(NoEvents)
            };
            let use_cases = assemble(store, keys, settings, events, metrics);
            serve(listener, use_cases, options, shutdown_signal()).await
        }
        None => {
            warn!(
                "no --redis-url: using the embedded in-memory store. It serves ONE replica only: \
                 signatures are not shared across replicas and are forgotten on restart"
            );
            let events: Arc<dyn EventLog> = if args.events_maxlen > 0 {
                Arc::new(LogEvents::new())
            } else {
                Arc::new(NoEvents)
            };
            let use_cases = assemble(
                Arc::new(MemoryStore::new()),
                keys,
                settings,
                events,
                metrics,
            );
            serve(listener, use_cases, options, shutdown_signal()).await
        }
    };
    // After the drain: the audit writer writes the events of the calls served, the metrics
    // endpoint and the reloads stop. Bounded as the drain is; past it, queued events are
    // lost, as when Redis is away.
    if !tasks.finish(drain_timeout).await {
        warn!(
            tasks = tasks.running(),
            "tasks still running at the drain timeout (audit events not yet written are dropped): exiting"
        );
    }
    Ok(served?)
}

/// The Redis settings from the flags; secrets come from files or the environment.
fn redis_settings(args: &ServeArgs, url: &str) -> Result<RedisSettings, RunError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| RunError::Read {
            path: path.to_owned(),
            source,
        })
    };
    // The password comes from a file, or the environment: never from a flag alone.
    let password = match (
        &args.redis_password_file,
        std::env::var("VOD_SIGNER_REDIS_PASSWORD"),
    ) {
        (Some(path), _) => {
            let bytes = read(path)?;
            let text = String::from_utf8(bytes).map_err(|source| RunError::NotUtf8 {
                path: path.clone(),
                source,
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (None, Ok(p)) if !p.is_empty() => Some(p),
        _ => None,
    };
    let tls_client = match (&args.redis_tls_cert, &args.redis_tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(RedisSettings {
        url: url.to_owned(),
        key_prefix: args.key_prefix.clone(),
        timeout: Duration::from_millis(args.store_timeout_ms),
        username: args.redis_username.clone(),
        password,
        tls_ca: args.redis_tls_ca.as_deref().map(read).transpose()?,
        tls_client,
        min_replicas_ack: args.min_replicas_ack,
        memory_reserve: args.redis_memory_reserve,
        allow_evicting: args.allow_evicting_redis,
        text_subject_records: args.text_subject_records,
    })
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
