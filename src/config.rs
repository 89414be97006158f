//! The command line (SPEC section 5): every flag also reads `VOD_SIGNER_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::notify::{Delivery, Lifecycle, PushTarget, Secrets, SecretsError};

/// The longest validity a signature may have, seconds: the cap of `--max-ttl` and `--ttl`.
const MAX_VALIDITY: u64 = crate::signature::MAX_VALIDITY_SECONDS as u64;
use crate::redis::RedisSettings;
use crate::server::ServerSettings;
use crate::service::Settings;

/// `--version`: the crate version and the git revision it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("VOD_SIGNER_REVISION"),
    ")"
);

/// vod-signer: issues and redeems single-use Tencent Cloud VOD upload signatures.
#[derive(Debug, Parser)]
#[command(name = "vod-signer", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "VOD_SIGNER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::default()
    )]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `vod_signer=debug`, ...); `RUST_LOG` wins when set.
    #[arg(
        long,
        global = true,
        env = "VOD_SIGNER_LOG_LEVEL",
        default_value = LOG_LEVEL
    )]
    pub log_level: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service.
    Serve(Box<ServeArgs>),
    /// Sign offline with a key from the keys directory (records nothing in any store).
    Issue(Box<IssueArgs>),
    /// Decode a signature and print its claims as JSON; needs no key.
    Inspect(InspectArgs),
}

/// Default of `--log-level`.
pub const LOG_LEVEL: &str = "info";

/// Log formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default: a person reads a terminal; collectors set json).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where upload notifications go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NotifyMode {
    /// POSTed to --notify-url.
    Push,
    /// Kept for PullEvents and ConfirmEvents.
    Pull,
}

/// `--worker-threads` that means one per core (the default).
pub const PER_CORE: usize = 0;

/// Tokio runtime flavours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RuntimeFlavor {
    /// `current-thread` on 2 cores or fewer (measured faster there), `multi-thread` above.
    #[default]
    Auto,
    /// One thread runs everything.
    CurrentThread,
    /// Work-stealing worker threads (`--worker-threads`).
    MultiThread,
}

/// Where the keys come from.
#[derive(Clone, Debug, Args)]
pub struct KeyArgs {
    /// Directory with one file per key: file name = SecretId, content = SecretKey.
    #[arg(long, env = "VOD_SIGNER_KEYS_DIR", value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// SecretId of the key that issues (optional when the directory holds one key).
    #[arg(long, env = "VOD_SIGNER_ACTIVE_KEY", value_name = "SECRET_ID")]
    pub active_key: Option<String>,
}

/// `vod-signer serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "VOD_SIGNER_LISTEN", default_value = ServerSettings::LISTEN)]
    pub listen: SocketAddr,
    /// Prometheus metrics address (`/metrics`); `off` serves none.
    #[arg(
        long,
        env = "VOD_SIGNER_METRICS_LISTEN",
        default_value = ServerSettings::METRICS_LISTEN
    )]
    pub metrics_listen: String,
    /// The keys.
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Redis: `redis://host:6379/0` or `rediss://` (one server), `redis+cluster://h:p,h:p`
    /// (Cluster seed nodes), `redis+sentinel://h:p,h:p/MASTER` (Sentinel); `rediss+` for TLS.
    /// Absent: the embedded in-memory store (one replica only).
    #[arg(long, env = "VOD_SIGNER_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// TTL of a signature when the request says 0, seconds.
    #[arg(long, env = "VOD_SIGNER_DEFAULT_TTL", default_value_t = Settings::default().default_ttl)]
    pub default_ttl: u64,
    /// Largest TTL a request may ask for, seconds (at most 7776000, 90 days).
    #[arg(long, env = "VOD_SIGNER_MAX_TTL", default_value_t = Settings::default().max_ttl,
          value_parser = clap::value_parser!(u64).range(1..=MAX_VALIDITY))]
    pub max_ttl: u64,
    /// Clock skew allowed at both ends of a signature's window, seconds.
    #[arg(long, env = "VOD_SIGNER_LEEWAY", default_value_t = Settings::default().leeway)]
    pub leeway: u64,
    /// Prefix of every Redis key.
    #[arg(long, env = "VOD_SIGNER_KEY_PREFIX", default_value_t = RedisSettings::default().key_prefix)]
    pub key_prefix: String,
    /// Bound on every store call, milliseconds; past it the call fails closed.
    #[arg(long, env = "VOD_SIGNER_STORE_TIMEOUT_MS",
          default_value_t = RedisSettings::default().timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub store_timeout_ms: u64,
    /// How often the store's health is checked, milliseconds.
    #[arg(long, env = "VOD_SIGNER_HEALTH_INTERVAL_MS",
          default_value_t = ServerSettings::HEALTH_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub health_interval_ms: u64,
    /// Calls served at once; more wait for a slot in arrival order (--max-queued-calls).
    #[arg(long, env = "VOD_SIGNER_MAX_CONCURRENT_CALLS",
          default_value_t = ServerSettings::MAX_CONCURRENT_CALLS,
          value_parser = clap::value_parser!(usize))]
    pub max_concurrent_calls: usize,
    /// Calls that may wait for a slot; past that they are shed at once with RATE_LIMITED
    /// (RESOURCE_EXHAUSTED); 0: no queue.
    #[arg(long, env = "VOD_SIGNER_MAX_QUEUED_CALLS",
          default_value_t = ServerSettings::MAX_QUEUED_CALLS,
          value_parser = clap::value_parser!(usize))]
    pub max_queued_calls: usize,
    /// How long a call may wait for a slot before it is shed with RATE_LIMITED, milliseconds.
    #[arg(long, env = "VOD_SIGNER_QUEUE_TIMEOUT_MS",
          default_value_t = ServerSettings::QUEUE_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub queue_timeout_ms: u64,
    /// On SIGTERM, how long calls in flight may take to finish, seconds.
    #[arg(long, env = "VOD_SIGNER_DRAIN_TIMEOUT", default_value_t = ServerSettings::DRAIN_TIMEOUT.as_secs())]
    pub drain_timeout: u64,
    /// Re-read the keys directory (and the caller policy) this often, seconds; 0: only on SIGHUP.
    #[arg(long, env = "VOD_SIGNER_KEYS_RELOAD_INTERVAL",
          default_value_t = crate::reload::Sources::INTERVAL.as_secs())]
    pub keys_reload_interval: u64,
    /// Plaintext port serving only gRPC health, for Kubernetes probes when the main port is TLS.
    #[arg(long, env = "VOD_SIGNER_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM) of the gRPC port; with --tls-key, the port speaks TLS only.
    #[arg(
        long,
        env = "VOD_SIGNER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        long,
        env = "VOD_SIGNER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM): clients must present a certificate it signed (mTLS).
    #[arg(
        long,
        env = "VOD_SIGNER_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes, seconds.
    #[arg(long, env = "VOD_SIGNER_TLS_RELOAD_INTERVAL",
          default_value_t = ServerSettings::TLS_RELOAD_INTERVAL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_reload_interval: u64,
    /// Caller policy (TOML): which caller may call which RPC. Without it, every caller may.
    #[arg(long, env = "VOD_SIGNER_CALLER_POLICY", value_name = "FILE")]
    pub caller_policy: Option<PathBuf>,
    /// Replicas that must acknowledge an issue, consume or revoke (Redis WAIT) before it
    /// succeeds; without them the call answers STORE_UNAVAILABLE.
    #[arg(long, env = "VOD_SIGNER_MIN_REPLICAS_ACK",
          default_value_t = RedisSettings::default().min_replicas_ack)]
    pub min_replicas_ack: u32,
    /// Share of Redis' maxmemory kept free for consumes and revokes: IssueSignature is refused
    /// STORE_FULL once used_memory is within it (0.1: issuing stops at 90 %).
    #[arg(long, env = "VOD_SIGNER_REDIS_MEMORY_RESERVE", value_name = "FRACTION",
          default_value_t = RedisSettings::default().memory_reserve, value_parser = reserve_fraction)]
    pub redis_memory_reserve: f64,
    /// Run on a Redis whose maxmemory-policy may evict records (any but noeviction), with a
    /// warning; without it such a Redis makes health NOT_SERVING and refuses issuing.
    #[arg(long, env = "VOD_SIGNER_ALLOW_EVICTING_REDIS")]
    pub allow_evicting_redis: bool,
    /// Write records issued for a subject in the text form that versions before 6 December
    /// 2026 read (48 bytes more each): only while such a version still serves, during the
    /// rolling upgrade from it.
    #[arg(long, env = "VOD_SIGNER_TEXT_SUBJECT_RECORDS")]
    pub text_subject_records: bool,
    /// Approximate cap of the `{prefix}events` audit stream; 0 turns events off. With the
    /// in-memory store, events go to the log instead.
    #[arg(long, env = "VOD_SIGNER_EVENTS_MAXLEN", default_value_t = crate::audit::DEFAULT_MAXLEN)]
    pub events_maxlen: u64,
    /// Issuance quota per end user (`subject`), e.g. `20/1h` (N per 30s, 1m, 1h, 1d...).
    #[arg(long, env = "VOD_SIGNER_QUOTA_PER_SUBJECT", value_name = "N/PERIOD")]
    pub quota_per_subject: Option<String>,
    /// A second, shorter per-subject quota against bursts, e.g. `5/1m`.
    #[arg(
        long,
        env = "VOD_SIGNER_QUOTA_PER_SUBJECT_BURST",
        value_name = "N/PERIOD"
    )]
    pub quota_per_subject_burst: Option<String>,
    /// Issuance quota per SecretId (all subjects together), e.g. `100000/1d`.
    #[arg(long, env = "VOD_SIGNER_QUOTA_PER_SECRET_ID", value_name = "N/PERIOD")]
    pub quota_per_secret_id: Option<String>,
    /// Let requests without `subject` skip the per-subject quotas (default: refuse them).
    #[arg(long, env = "VOD_SIGNER_QUOTA_ALLOW_MISSING_SUBJECT")]
    pub quota_allow_missing_subject: bool,
    /// Most ISSUED, unused, unexpired signatures one subject may hold; an issue beyond it is
    /// refused RATE_LIMITED (quota=outstanding). 0: no cap.
    #[arg(
        long,
        env = "VOD_SIGNER_MAX_OUTSTANDING_PER_SUBJECT",
        default_value_t = Settings::default().max_outstanding_per_subject,
        value_name = "N"
    )]
    pub max_outstanding_per_subject: u32,
    /// Redis ACL user name.
    #[arg(long, env = "VOD_SIGNER_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// File holding the Redis password (or set VOD_SIGNER_REDIS_PASSWORD; never a flag).
    #[arg(long, env = "VOD_SIGNER_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the Redis server certificate, for `rediss://`.
    #[arg(long, env = "VOD_SIGNER_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a Redis that requires one.
    #[arg(
        long,
        env = "VOD_SIGNER_REDIS_TLS_CERT",
        value_name = "FILE",
        requires = "redis_tls_key"
    )]
    pub redis_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for a Redis that requires a client certificate.
    #[arg(
        long,
        env = "VOD_SIGNER_REDIS_TLS_KEY",
        value_name = "FILE",
        requires = "redis_tls_cert"
    )]
    pub redis_tls_key: Option<PathBuf>,
    /// Do not serve gRPC server reflection (v1 and v1alpha).
    #[arg(long, env = "VOD_SIGNER_NO_REFLECTION")]
    pub no_reflection: bool,
    /// Quickstart: in-memory store and a fresh random key, printed once.
    #[arg(long, env = "VOD_SIGNER_DEV", conflicts_with_all = ["keys_dir", "active_key", "redis_url"])]
    pub dev: bool,
    /// OTLP/gRPC collector that receives one span per RPC (`http://collector:4317`); when
    /// absent, `OTEL_EXPORTER_OTLP_ENDPOINT` is used; neither: no traces (the default).
    #[arg(long, env = "VOD_SIGNER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// A consumed upload with no CompleteUpload this long after its consume is marked
    /// ABANDONED (with an event and a notification), e.g. `1h`, `30m`.
    #[arg(long, env = "VOD_SIGNER_COMPLETION_WINDOW", value_name = "DURATION",
          default_value_t = humantime::Duration::from(Lifecycle::COMPLETION_WINDOW))]
    pub completion_window: humantime::Duration,
    /// Push each upload notification (completed, abandoned) to this URL as a signed POST
    /// (Standard Webhooks); needs --notify-secret-file.
    #[arg(long, env = "VOD_SIGNER_NOTIFY_URL", value_name = "URL")]
    pub notify_url: Option<String>,
    /// `pull`: keep notifications for PullEvents/ConfirmEvents instead of pushing them;
    /// `push`: what --notify-url means. Neither: no notifications are queued.
    #[arg(long, env = "VOD_SIGNER_NOTIFY_MODE", value_enum)]
    pub notify_mode: Option<NotifyMode>,
    /// The secrets that sign pushes, one a line (`whsec_` and base64); during a rotation each
    /// one signs every push.
    #[arg(long, env = "VOD_SIGNER_NOTIFY_SECRET_FILE", value_name = "FILE")]
    pub notify_secret_file: Option<PathBuf>,
    /// A notification not delivered (or confirmed) this long after it was queued is
    /// dead-lettered: kept in Redis and counted, no longer retried.
    #[arg(long, env = "VOD_SIGNER_NOTIFY_MAX_AGE", value_name = "DURATION",
          default_value_t = humantime::Duration::from(Lifecycle::MAX_AGE))]
    pub notify_max_age: humantime::Duration,
    /// Each push attempt's time limit (connect, send, answer).
    #[arg(long, env = "VOD_SIGNER_NOTIFY_TIMEOUT", value_name = "DURATION",
          default_value_t = humantime::Duration::from(Lifecycle::ATTEMPT_TIMEOUT))]
    pub notify_timeout: humantime::Duration,
    /// Push attempts in flight at once per replica.
    #[arg(long, env = "VOD_SIGNER_NOTIFY_CONCURRENCY", default_value_t = Lifecycle::CONCURRENCY as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub notify_concurrency: u64,
    /// Tokio runtime flavour.
    #[arg(long, env = "VOD_SIGNER_RUNTIME", value_enum, default_value_t = RuntimeFlavor::default())]
    pub runtime: RuntimeFlavor,
    /// Worker threads of the multi-thread runtime (0: one per core).
    #[arg(long, env = "VOD_SIGNER_WORKER_THREADS", default_value_t = PER_CORE)]
    pub worker_threads: usize,
}

impl ServeArgs {
    /// The quotas the flags ask for.
    pub fn quotas(&self) -> Result<Vec<crate::quota::Quota>, ConfigError> {
        use crate::quota::{Quota, Scope};
        let flags = [
            (Scope::Subject, "subject", &self.quota_per_subject),
            (
                Scope::Subject,
                "subject-burst",
                &self.quota_per_subject_burst,
            ),
            (Scope::SecretId, "secret-id", &self.quota_per_secret_id),
        ];
        flags
            .into_iter()
            .filter_map(|(scope, name, text)| {
                text.as_deref().map(|t| {
                    Quota::parse(scope, name, t)
                        .map_err(|source| ConfigError::Quota { name, source })
                })
            })
            .collect()
    }

    /// The upload lifecycle from the flags: the completion window and where notifications go.
    pub fn lifecycle(&self) -> Result<Lifecycle, ConfigError> {
        let window: std::time::Duration = self.completion_window.into();
        if window.as_secs() == 0 {
            return Err(ConfigError::CompletionWindow);
        }
        let delivery = match (self.notify_mode, &self.notify_url) {
            (Some(NotifyMode::Pull), Some(_)) => {
                return Err(ConfigError::PullAndUrl);
            }
            (Some(NotifyMode::Pull), None) => Delivery::Pull,
            (Some(NotifyMode::Push), None) => {
                return Err(ConfigError::PushWithoutUrl);
            }
            (_, Some(url)) => {
                let url: hyper::Uri = url.parse().map_err(|source| ConfigError::NotifyUrl {
                    url: url.clone(),
                    source,
                })?;
                if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                    return Err(ConfigError::NotifyUrlScheme {
                        url: url.to_string(),
                    });
                }
                let path = self
                    .notify_secret_file
                    .as_deref()
                    .ok_or(ConfigError::NoNotifySecret)?;
                let secrets = Secrets::load(path).map_err(ConfigError::NotifySecret)?;
                Delivery::Push(std::sync::Arc::new(PushTarget {
                    url,
                    secrets,
                    attempt_timeout: self.notify_timeout.into(),
                    concurrency: self.notify_concurrency as usize,
                }))
            }
            (None, None) => Delivery::Off,
        };
        Ok(Lifecycle {
            completion_window: window,
            delivery,
            max_age: self.notify_max_age.into(),
            ..Lifecycle::default()
        })
    }

    /// Where traces go: `--otlp-endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`; None: off.
    pub fn otlp_endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
    }

    /// The metrics address, or None when `--metrics-listen off`.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics_listen.trim() {
            "" | "off" => Ok(None),
            addr => addr
                .parse()
                .map(Some)
                .map_err(|source| ConfigError::MetricsListen {
                    addr: addr.to_owned(),
                    source,
                }),
        }
    }
}

/// Flags that are each well-formed but do not make a configuration together, or whose
/// values are checked only once the service starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--quota-per-*` that is not `N/PERIOD`.
    #[error("--quota-per-{name}")]
    Quota {
        /// The quota's name (`subject`, `subject-burst`, `secret-id`).
        name: &'static str,
        /// What is wrong with it.
        source: crate::quota::QuotaError,
    },
    /// A zero `--completion-window`: every upload would be abandoned at once.
    #[error("--completion-window must be at least 1s")]
    CompletionWindow,
    /// Both ways of delivering notifications at once.
    #[error(
        "--notify-url pushes and --notify-mode pull keeps notifications for PullEvents: give one of them"
    )]
    PullAndUrl,
    /// Pushing without a place to push to.
    #[error("--notify-mode push needs --notify-url")]
    PushWithoutUrl,
    /// A `--notify-url` that is not a URI.
    #[error("--notify-url {url:?}")]
    NotifyUrl {
        /// The flag's value.
        url: String,
        /// Why it does not parse.
        source: hyper::http::uri::InvalidUri,
    },
    /// A `--notify-url` that is not an absolute http(s) URL.
    #[error("--notify-url {url}: an http:// or https:// URL")]
    NotifyUrlScheme {
        /// The flag's value.
        url: String,
    },
    /// Pushing unsigned is not offered.
    #[error("--notify-url needs --notify-secret-file: every push is signed (Standard Webhooks)")]
    NoNotifySecret,
    /// `--notify-secret-file` cannot be used.
    #[error("--notify-secret-file")]
    NotifySecret(#[source] SecretsError),
    /// A `--metrics-listen` that is neither an address nor `off`.
    #[error("--metrics-listen {addr:?}: an address like 0.0.0.0:9090, or off")]
    MetricsListen {
        /// The flag's value.
        addr: String,
        /// Why it does not parse.
        source: std::net::AddrParseError,
    },
}

/// `--redis-memory-reserve`: a fraction from 0 (issue until Redis is full) to below 1.
fn reserve_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "{text:?} is not a fraction from 0 to below 1 (e.g. 0.1)"
        )),
    }
}

/// The optional parameters of a signature, as flags.
#[derive(Clone, Debug, Default, Args)]
pub struct PolicyArgs {
    /// classId: category id.
    #[arg(long, env = "VOD_SIGNER_CLASS_ID")]
    pub class_id: Option<u64>,
    /// procedure: task-flow template run after upload.
    #[arg(long, env = "VOD_SIGNER_PROCEDURE")]
    pub procedure: Option<String>,
    /// taskPriority: -10..=10, only with --procedure.
    #[arg(long, env = "VOD_SIGNER_TASK_PRIORITY", allow_negative_numbers = true)]
    pub task_priority: Option<i32>,
    /// taskNotifyMode: Finish, Change or None, only with --procedure.
    #[arg(long, env = "VOD_SIGNER_TASK_NOTIFY_MODE")]
    pub task_notify_mode: Option<String>,
    /// sourceContext: at most 250 bytes, echoed in the upload-complete event.
    #[arg(long, env = "VOD_SIGNER_SOURCE_CONTEXT")]
    pub source_context: Option<String>,
    /// sessionContext: at most 1000 bytes.
    #[arg(long, env = "VOD_SIGNER_SESSION_CONTEXT")]
    pub session_context: Option<String>,
    /// vodSubAppId: sub-application id.
    #[arg(long, env = "VOD_SIGNER_VOD_SUB_APP_ID")]
    pub vod_sub_app_id: Option<u64>,
    /// storageRegion, e.g. ap-chongqing.
    #[arg(long, env = "VOD_SIGNER_STORAGE_REGION")]
    pub storage_region: Option<String>,
    /// maxFileSize: largest upload in bytes (enforced by vod-signer at consume).
    #[arg(long, env = "VOD_SIGNER_MAX_FILE_SIZE")]
    pub max_file_size: Option<u64>,
}

/// `vod-signer issue`.
#[derive(Clone, Debug, Args)]
pub struct IssueArgs {
    /// The keys.
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Validity of the signature, seconds (at most 7776000).
    #[arg(long, env = "VOD_SIGNER_TTL", default_value_t = Settings::default().default_ttl,
          value_parser = clap::value_parser!(u64).range(1..=MAX_VALIDITY))]
    pub ttl: u64,
    /// The optional parameters.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print the signature and its claims as JSON instead of the bare signature.
    #[arg(long)]
    pub json: bool,
}

/// `vod-signer inspect`.
#[derive(Clone, Debug, Args)]
pub struct InspectArgs {
    /// The signature to decode (`-` reads it from standard input).
    pub signature: String,
}
