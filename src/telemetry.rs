//! Logs: `tracing` on stderr, as text or JSON. Traces (optional): the same `tracing` spans,
//! exported as OpenTelemetry spans over OTLP/gRPC.
//!
//! With traces off (no `--otlp-endpoint`, no `OTEL_EXPORTER_OTLP_ENDPOINT`) the subscriber is
//! exactly the logging one: no OpenTelemetry layer, no exporter, no thread.
//!
//! With traces on, a second layer turns the service's own spans (never its log events) into
//! OpenTelemetry spans, and [`QueueProcessor`] hands each finished span to a bounded queue.
//! An exporter thread of its own (a one-thread tokio runtime, so a collector that is slow or
//! gone never touches the serving runtime) sends batches. A full queue or a batch the
//! collector does not take in time drops spans, counted in `vodsigner_trace_spans_dropped_total`;
//! a call never waits for the collector.
//! Not the SDK's `BatchSpanProcessor`: it exports on the serving runtime (about 9 % more work on
//! the calls' thread, measured) and drops spans without counting them (docs/observability.md).

use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

use std::io::IsTerminal as _;

use crate::config::LogFormat;
use crate::metrics::{SPANS_EXPORT_FAILED, SPANS_QUEUE_FULL, trace_spans_dropped};

/// Where and how traces are exported.
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// The OTLP/gRPC collector, `http://host:4317`.
    pub endpoint: String,
    /// `service.name` of the resource: `OTEL_SERVICE_NAME`, else `vod-signer`.
    pub service_name: String,
    /// Spans waiting for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048); more are
    /// dropped.
    pub max_queue: usize,
    /// Spans per export call at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512).
    pub max_batch: usize,
    /// How long a span may wait for its batch (`OTEL_BSP_SCHEDULE_DELAY` ms, default 1000).
    pub delay: Duration,
    /// Bound on one export call (`OTEL_EXPORTER_OTLP_TIMEOUT` ms, default 10000).
    pub export_timeout: Duration,
}

impl TraceSettings {
    /// Traces to `endpoint`, the rest from the standard `OTEL_*` variables or their defaults.
    pub fn from_env(endpoint: String) -> TraceSettings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, default: u64| {
            var(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        TraceSettings {
            endpoint,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "vod-signer".to_owned()),
            max_queue: number("OTEL_BSP_MAX_QUEUE_SIZE", 2048).max(1) as usize,
            max_batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).max(1) as usize,
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 1000)),
            export_timeout: Duration::from_millis(number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)),
        }
    }
}

/// Why traces cannot be exported (logging itself cannot fail).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter's own runtime could not be built.
    #[error("cannot start the trace exporter")]
    Runtime(#[source] std::io::Error),
    /// The exporter thread could not be spawned.
    #[error("cannot start the trace exporter thread")]
    Thread(#[source] std::io::Error),
    /// The collector endpoint is unusable.
    #[error("--otlp-endpoint {endpoint:?}")]
    Endpoint {
        /// The `--otlp-endpoint` value as given.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The exporter thread ended before saying whether it started.
    #[error("the trace exporter thread stopped")]
    Stopped,
}

/// Keeps the trace export running; dropping it sends what is queued (bounded by a second).
#[must_use = "dropping the guard stops exporting traces"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
        }
    }
}

/// Sets up `tracing` on stderr: `RUST_LOG` if set, else `level`; and, with `traces`, the
/// export of the service's spans. Fails only on an unusable collector endpoint.
pub fn init(
    format: LogFormat,
    level: &str,
    traces: Option<TraceSettings>,
) -> Result<Telemetry, TelemetryError> {
    let Some(traces) = traces else {
        init_logging(format, level);
        return Ok(Telemetry { provider: None });
    };
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let provider = tracer_provider(&traces)?;
    // Only the service's own spans, at any level (the per-call span, the store calls); never
    // an event, so no log line's fields become span data.
    fn ours(meta: &tracing::Metadata<'_>) -> bool {
        meta.is_span() && meta.target().starts_with("vod_signer")
    }
    let ours = tracing_subscriber::filter::DynFilterFn::new(|meta, _| ours(meta))
        .with_callsite_filter(|meta| {
            if ours(meta) {
                tracing::subscriber::Interest::always()
            } else {
                tracing::subscriber::Interest::never()
            }
        });
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("vod-signer"))
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(ours);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let logs = match format {
        LogFormat::Text => logs.with_filter(env_filter(level)).boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .with_filter(env_filter(level))
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    tracing::info!(endpoint = %traces.endpoint, service = %traces.service_name, "exporting traces (OTLP/gRPC)");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn env_filter(level: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|e| {
            eprintln!("vod-signer: bad --log-level {level:?} ({e}); using info");
            EnvFilter::new("info")
        })
}

/// Sets up `tracing` on stderr, logs only: `RUST_LOG` if set, else `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter(level))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: in a log file or collector they are noise, and
        // writing them showed in the per-call profile.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The tracer provider: sampling by the SDK's defaults (parent-based, always on; the
/// standard `OTEL_TRACES_SAMPLER` variables apply), spans to [`QueueProcessor`]. Public for
/// other processes of the flow (the upload-flow example) that export the same way.
pub fn tracer_provider(traces: &TraceSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(traces.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let processor = QueueProcessor::start(traces, resource.clone())?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(processor)
        .build())
}

/// A message to the exporter thread.
enum Message {
    Span(Box<SpanData>),
    /// Send what is queued, then stop and say so.
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// Hands finished spans to the exporter thread through a bounded queue, never waiting: a full
/// queue drops the span (counted).
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<Message>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueueProcessor {
    /// Starts the exporter thread; fails if the exporter cannot be built (a bad endpoint).
    fn start(traces: &TraceSettings, resource: Resource) -> Result<QueueProcessor, TelemetryError> {
        let (queue, spans) = mpsc::channel(traces.max_queue);
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        let traces = traces.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = built_tx.send(Err(TelemetryError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Built inside this runtime: the gRPC channel's tasks live here.
                    let exporter = opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(traces.endpoint.clone())
                        .with_timeout(traces.export_timeout)
                        .build();
                    let mut exporter = match exporter {
                        Ok(exporter) => {
                            let _ = built_tx.send(Ok(()));
                            exporter
                        }
                        Err(e) => {
                            let _ = built_tx.send(Err(TelemetryError::Endpoint {
                                endpoint: traces.endpoint.clone(),
                                source: e,
                            }));
                            return;
                        }
                    };
                    exporter.set_resource(&resource);
                    export_loop(exporter, spans, &traces).await;
                });
            })
            .map_err(TelemetryError::Thread)?;
        built_rx.recv().map_err(|_| TelemetryError::Stopped)??;
        Ok(QueueProcessor {
            queue,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            trace_spans_dropped(SPANS_QUEUE_FULL, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.queue.try_send(Message::Shutdown(done_tx)).is_err() {
            return Err(OTelSdkError::InternalFailure("export queue full".into()));
        }
        match done_rx.recv_timeout(timeout) {
            Ok(()) => {
                let _ = thread.join();
                Ok(())
            }
            Err(_) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

/// Collects spans into batches (full, or the oldest waited `delay`) and exports them one
/// batch at a time, each bounded by the export timeout; a failed batch is dropped (counted),
/// never retried, so the queue behind it keeps moving.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queue: mpsc::Receiver<Message>,
    traces: &TraceSettings,
) {
    let mut done = None;
    while done.is_none() {
        let mut batch = Vec::new();
        match queue.recv().await {
            Some(Message::Span(span)) => batch.push(*span),
            Some(Message::Shutdown(tx)) => done = Some(tx),
            None => break,
        }
        let deadline = tokio::time::sleep(traces.delay);
        tokio::pin!(deadline);
        while done.is_none() && batch.len() < traces.max_batch {
            tokio::select! {
                message = queue.recv() => match message {
                    Some(Message::Span(span)) => batch.push(*span),
                    Some(Message::Shutdown(tx)) => done = Some(tx),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        export(&exporter, batch, traces.export_timeout).await;
    }
    if let Some(done) = done {
        // What is still queued, in one last bounded batch.
        let mut rest = Vec::new();
        while let Ok(Message::Span(span)) = queue.try_recv() {
            rest.push(*span);
        }
        export(&exporter, rest, traces.export_timeout).await;
        let _ = exporter.shutdown();
        let _ = done.send(());
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    timeout: Duration,
) {
    if batch.is_empty() {
        return;
    }
    let spans = batch.len() as u64;
    match tokio::time::timeout(timeout, exporter.export(batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            trace_spans_dropped(SPANS_EXPORT_FAILED, spans);
            tracing::debug!(error = %e, spans, "trace export failed");
        }
        Err(_) => {
            trace_spans_dropped(SPANS_EXPORT_FAILED, spans);
            tracing::debug!(spans, "trace export timed out");
        }
    }
}
