//! The whole upload flow on one machine: an app server, an upload gateway and a web page,
//! talking to vod-signer over gRPC with the typed client.
//!
//! ```sh
//! # starts redis-server and target/debug/vod-signer itself, on free loopback ports:
//! cargo build && cargo run --example upload-flow -- --spawn
//! # or against a vod-signer you run:
//! cargo run --example upload-flow -- --vod-signer http://127.0.0.1:50051
//! ```
//!
//! Then open the app server's URL it prints, sign in as demo/demo and upload a file: the
//! gateway completes it (`CompleteUpload`) and vod-signer's signed push confirms it to the app
//! server. See `examples/upload-flow/README.md`.

mod app;
mod gateway;
mod spawn;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The whole upload flow: app server, upload gateway and web page, on vod-signer.
#[derive(Parser, Debug)]
#[command(name = "upload-flow")]
struct Args {
    /// vod-signer's gRPC endpoint.
    #[arg(
        long,
        env = "UPLOAD_FLOW_VOD_SIGNER",
        required_unless_present = "spawn",
        conflicts_with = "spawn"
    )]
    vod_signer: Option<String>,
    /// Start a redis-server and `vod-signer serve` on free loopback ports instead.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: the vod-signer binary (default: the one next to this example in
    /// target/<profile>/, built by `cargo build`).
    #[arg(long, env = "UPLOAD_FLOW_VOD_SIGNER_BIN")]
    vod_signer_bin: Option<PathBuf>,
    /// The app server's address (it serves the page).
    #[arg(long, default_value = "127.0.0.1:8080")]
    app_listen: SocketAddr,
    /// The upload gateway's address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    gateway_listen: SocketAddr,
    /// Where the gateway stores uploads (default: a temporary directory, removed at exit).
    #[arg(long)]
    storage: Option<PathBuf>,
    /// maxFileSize of each signature, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_file_size: u64,
    /// Lifetime of each signature, seconds.
    #[arg(long, default_value_t = 600)]
    ttl: u64,
    /// Bearer token of the app server, when vod-signer has a caller policy (role issuer).
    #[arg(long, env = "UPLOAD_FLOW_ISSUER_TOKEN", hide_env_values = true)]
    issuer_token: Option<String>,
    /// Bearer token of the gateway, when vod-signer has a caller policy (role consumer).
    #[arg(long, env = "UPLOAD_FLOW_CONSUMER_TOKEN", hide_env_values = true)]
    consumer_token: Option<String>,
    /// With --spawn: vod-signer's --completion-window, after which an upload consumed and
    /// never completed (cut off mid-body) is ABANDONED and the app server told.
    #[arg(long, default_value = "1m", conflicts_with = "vod_signer")]
    completion_window: humantime::Duration,
    /// Without --spawn: the --notify-secret-file of your vod-signer (run with --notify-url
    /// http://<app-listen>/notify), so the app server can check its pushes.
    #[arg(long, env = "UPLOAD_FLOW_NOTIFY_SECRET_FILE", conflicts_with = "spawn")]
    notify_secret_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let _traces = match init_logs_and_traces() {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("upload-flow: {}", vod_signer::report::Chain(&e));
            std::process::exit(1);
        }
    };
    if let Err(e) = run(Args::parse()).await {
        eprintln!("upload-flow: {e}");
        std::process::exit(1);
    }
}

/// Logs on stderr; with `OTEL_EXPORTER_OTLP_ENDPOINT` set, also the app server's and the
/// gateway's request spans, exported the way vod-signer exports its own (service name
/// `upload-flow`). A `--spawn`ed vod-signer inherits the variable, so the whole flow lands in
/// one collector as one trace per upload.
fn init_logs_and_traces() -> Result<Option<TracerGuard>, vod_signer::telemetry::TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        );
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let provider = match endpoint {
        Some(endpoint) => Some(vod_signer::telemetry::tracer_provider(
            &vod_signer::telemetry::TraceSettings {
                service_name: "upload-flow".into(),
                ..vod_signer::telemetry::TraceSettings::from_env(endpoint)
            },
        )?),
        None => None,
    };
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("upload-flow"))
            // The flow's own spans and the client's, never those of h2 or hyper (nor the
            // exporter's own traffic).
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span()
                    && (m.target().starts_with("upload_flow")
                        || m.target().starts_with("vod_signer"))
            }))
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(provider.map(TracerGuard))
}

/// Sends the spans still queued at exit.
struct TracerGuard(opentelemetry_sdk::trace::SdkTracerProvider);

impl Drop for TracerGuard {
    fn drop(&mut self) {
        let _ = self
            .0
            .shutdown_with_timeout(std::time::Duration::from_secs(1));
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Bound first: a spawned vod-signer needs the app server's URL for its pushes.
    let bound = web::bind(args.app_listen, args.gateway_listen).await?;
    let (stack, webhook_secrets) = if args.spawn {
        let binary = match args.vod_signer_bin.clone() {
            Some(binary) => binary,
            None => spawn::binary_next_to_example().ok_or(
                "no vod-signer binary next to this example: run `cargo build` first \
                 (or pass --vod-signer-bin PATH)",
            )?,
        };
        let notify = spawn::NotifyTo {
            url: bound.notify_url(),
            secret: web::new_webhook_secret(),
            completion_window: args.completion_window.into(),
        };
        let stack = spawn::Stack::start(&binary, true, Some(&notify)).await?;
        tracing::info!(
            redis = %stack.redis.url(), vod_signer = %stack.signer.endpoint(),
            notify_url = %notify.url, completion_window = %args.completion_window,
            "started redis-server and vod-signer"
        );
        (Some(stack), Some(notify.secret))
    } else {
        let secrets = match &args.notify_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--notify-secret-file {}: {e}", path.display()))?,
            ),
            None => {
                tracing::warn!(
                    "no --notify-secret-file: the app server refuses vod-signer's pushes, so no \
                     upload is confirmed"
                );
                None
            }
        };
        (None, secrets)
    };
    let vod_signer = match (&stack, &args.vod_signer) {
        (Some(stack), _) => stack.signer.endpoint(),
        (None, Some(endpoint)) => endpoint.clone(),
        (None, None) => return Err("pass --vod-signer URL or --spawn".into()),
    };

    let temporary = match &args.storage {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(|e| e.to_string())?),
    };
    let storage = args
        .storage
        .clone()
        .or_else(|| temporary.as_ref().map(|t| t.path().to_owned()))
        .expect("a storage directory");

    let flow = web::start(
        bound,
        web::FlowOptions {
            vod_signer: vod_signer.clone(),
            issuer_token: args.issuer_token,
            consumer_token: args.consumer_token,
            webhook_secrets,
            storage: storage.clone(),
            max_file_size: args.max_file_size,
            ttl_seconds: args.ttl,
        },
    )
    .await?;
    tracing::info!(
        app = %flow.app_url, gateway = %flow.gateway_url, %vod_signer,
        storage = %storage.display(), max_file_size = args.max_file_size,
        "upload flow running"
    );
    eprintln!(
        "\n  open {}  and sign in as {} / {}  (Ctrl-C stops everything)\n",
        flow.app_url,
        web::DEMO_USER,
        web::DEMO_PASSWORD
    );
    // Ctrl-C or SIGTERM: stop, and kill what --spawn started (dropping it).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(
        files_stored = flow.gateway.files().len(),
        notifications_received = flow.app.notifications().len(),
        pushes_refused = flow.app.refused_pushes(),
        completions_pending = flow.gateway.completions_pending(),
        "stopping"
    );
    drop(flow);
    drop(stack);
    Ok(())
}
