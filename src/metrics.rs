//! Prometheus metrics (SPEC section 6 names) and the `/metrics` HTTP endpoint.
//!
//! Labels are bounded: `rpc` (one per RPC), `result` (`ok` or a reason token), `op` (store
//! operations). Nothing taken from a request (secret id, subject) ever becomes a label.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use strum::IntoEnumIterator as _;
use tokio::net::TcpListener;

use crate::auth::Rpc;
use crate::quota::Charge;
use crate::redis::MemoryStatus;
use crate::store::{
    Admission, ConsumeOutcome, ListCursor, Listed, QuotaOutcome, RecordKey, RecordRef, RecordState,
    Store, StoreError,
};

/// Buckets of RPC latency, seconds: 100 µs to ~3 s.
const REQUEST_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// A store operation: its `op` label, and `store.<op>` as its span's name.
#[derive(Clone, Copy, Debug, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
enum StoreOp {
    Issue,
    Status,
    Consume,
    Revoke,
    Quota,
    Admit,
    Discard,
    List,
    /// A health ping (no span: it belongs to no call).
    Ping,
}

impl StoreOp {
    fn label(self) -> OpLabel {
        OpLabel { op: self.into() }
    }

    /// The trace span name of the operation.
    fn span_name(self) -> &'static str {
        match self {
            StoreOp::Issue => "store.issue",
            StoreOp::Status => "store.status",
            StoreOp::Consume => "store.consume",
            StoreOp::Revoke => "store.revoke",
            StoreOp::Quota => "store.quota",
            StoreOp::Admit => "store.admit",
            StoreOp::Discard => "store.discard",
            StoreOp::List => "store.list",
            StoreOp::Ping => "store.ping",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    reason: &'static str,
}

/// Spans the trace exporter lost, process-wide like the tracer itself (every [`Metrics`]
/// exposes the same counter).
static TRACE_SPANS_DROPPED: std::sync::LazyLock<Family<DropLabel, Counter>> =
    std::sync::LazyLock::new(|| {
        let family = Family::<DropLabel, Counter>::default();
        for reason in [SPANS_QUEUE_FULL, SPANS_EXPORT_FAILED] {
            let _ = family.get_or_create(&DropLabel { reason });
        }
        family
    });

/// `reason` of a span dropped because the export queue was full.
pub const SPANS_QUEUE_FULL: &str = "queue_full";
/// `reason` of a span dropped because the collector did not accept its batch in time.
pub const SPANS_EXPORT_FAILED: &str = "export_failed";

/// Counts `spans` spans the trace exporter dropped, for `reason` ([`SPANS_QUEUE_FULL`] or
/// [`SPANS_EXPORT_FAILED`]).
pub fn trace_spans_dropped(reason: &'static str, spans: u64) {
    TRACE_SPANS_DROPPED
        .get_or_create(&DropLabel { reason })
        .inc_by(spans);
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// The service's metrics, one set per server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Each RPC's `ok` counter and latency histogram, indexed by [`Rpc`], resolved once: a
    /// labelled lookup hashes its labels under a lock, twice on every call otherwise. (So
    /// these series exist, at 0, from the start, as Prometheus advises.)
    by_rpc: Vec<(Counter, Histogram)>,
    /// Each store operation's latency histogram, indexed by [`StoreOp`]: resolved once, not
    /// looked up (hashed) on every call.
    store_latency: Vec<Histogram>,
    store_errors: Family<OpLabel, Counter>,
    inflight: Gauge,
    store_up: Gauge,
    store_records: Gauge,
    active_key_missing: Gauge,
    redis: RedisGauges,
}

/// What the memory watch of the Redis store reports (SPEC section 6 names).
#[derive(Debug, Default)]
struct RedisGauges {
    evicted_keys: Gauge,
    memory_ratio: Gauge<f64, AtomicU64>,
    evicting: Gauge,
    resets: Counter,
    /// Resets already counted in `resets` (the watch reports a running total).
    resets_counted: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "vodsigner_requests",
            "RPCs answered, by RPC and result (ok or the reason token)",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RpcLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "vodsigner_request_duration_seconds",
            "RPC latency in seconds",
            request_duration.clone(),
        );
        let store_duration: HistogramFamily<OpLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "vodsigner_store_duration_seconds",
            "Store call latency in seconds",
            store_duration.clone(),
        );
        let store_errors = Family::<OpLabel, Counter>::default();
        registry.register(
            "vodsigner_store_errors",
            "Store calls that failed or timed out (the RPC answered STORE_UNAVAILABLE)",
            store_errors.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "vodsigner_inflight_requests",
            "RPCs being served now",
            inflight.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "vodsigner_store_up",
            "1 while the store answers health pings, else 0",
            store_up.clone(),
        );
        let store_records = Gauge::default();
        registry.register(
            "vodsigner_store_records",
            "Signature records held (in-memory store only: issued, consumed or revoked, not yet expired)",
            store_records.clone(),
        );
        let active_key_missing = Gauge::default();
        registry.register(
            "vodsigner_active_key_missing",
            "1 while IssueSignature is refused with NO_ACTIVE_KEY (the active key is not in the keys directory), else 0",
            active_key_missing.clone(),
        );
        let redis = RedisGauges::default();
        registry.register(
            "vodsigner_redis_evicted_keys",
            "Keys Redis evicted since it started (INFO evicted_keys, summed over the masters); any rise lost signature records",
            redis.evicted_keys.clone(),
        );
        registry.register(
            "vodsigner_redis_memory_ratio",
            "used_memory / maxmemory of the fullest Redis master (0 without maxmemory); IssueSignature is refused STORE_FULL from 1 - --redis-memory-reserve",
            redis.memory_ratio.clone(),
        );
        registry.register(
            "vodsigner_redis_evicting",
            "1 while a Redis master's maxmemory-policy may evict records (not noeviction): health NOT_SERVING, unless --allow-evicting-redis",
            redis.evicting.clone(),
        );
        registry.register(
            "vodsigner_store_resets",
            "Times Redis came back without its records (a new run_id and at most half the keys): outstanding signatures are then refused SIGNATURE_NOT_ISSUED",
            redis.resets.clone(),
        );
        registry.register(
            "vodsigner_trace_spans_dropped",
            "Trace spans not delivered to the OTLP collector: queue_full (the bounded export queue was full) or export_failed (the collector did not take the batch in time)",
            TRACE_SPANS_DROPPED.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "vodsigner_build_info",
            "Always 1; the version label says which build runs",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let by_rpc = Rpc::iter()
            .map(|rpc| {
                let rpc = rpc.name();
                let ok = RequestLabels { rpc, result: "ok" };
                (
                    requests.get_or_create(&ok).clone(),
                    request_duration.get_or_create(&RpcLabel { rpc }).clone(),
                )
            })
            .collect();
        let store_latency = StoreOp::iter()
            .map(|op| store_duration.get_or_create(&op.label()).clone())
            .collect();
        Metrics {
            registry,
            requests,
            by_rpc,
            store_latency,
            store_errors,
            inflight,
            store_up,
            store_records,
            active_key_missing,
            redis,
        }
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts an RPC in flight until the guard is dropped.
    pub fn inflight(&self) -> InflightGuard {
        self.inflight.inc();
        InflightGuard(self.inflight.clone())
    }

    /// Records one answered RPC.
    pub fn request(&self, rpc: Rpc, result: &'static str, elapsed: Duration) {
        let (ok, latency) = &self.by_rpc[rpc as usize];
        if result == "ok" {
            ok.inc();
        } else {
            self.requests
                .get_or_create(&RequestLabels {
                    rpc: rpc.name(),
                    result,
                })
                .inc();
        }
        latency.observe(elapsed.as_secs_f64());
    }

    /// Records how many signature records the store holds.
    pub fn set_store_records(&self, records: usize) {
        self.store_records
            .set(records.min(i64::MAX as usize) as i64);
    }

    /// Records whether the store answers health pings.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Records what the Redis store's memory watch reports.
    pub fn set_redis_memory(&self, memory: &MemoryStatus) {
        let r = &self.redis;
        r.evicted_keys
            .set(memory.evicted_keys.min(i64::MAX as u64) as i64);
        r.memory_ratio.set(memory.ratio);
        r.evicting.set(i64::from(!memory.evicting.is_empty()));
        let counted = r.resets_counted.swap(memory.resets, Ordering::Relaxed);
        r.resets.inc_by(memory.resets.saturating_sub(counted));
    }

    /// Records whether the active key is missing from the loaded keys (issuing refused).
    pub fn set_active_key_missing(&self, missing: bool) {
        self.active_key_missing.set(i64::from(missing));
    }

    fn store_call<T>(&self, op: StoreOp, started: Instant, result: &Result<T, StoreError>) {
        self.store_latency[op as usize].observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.store_errors.get_or_create(&op.label()).inc();
        }
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InflightGuard(Gauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A store that records the latency and errors of every call.
pub struct Instrumented<S> {
    inner: Arc<S>,
    metrics: Arc<Metrics>,
}

impl<S> Instrumented<S> {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<S>, metrics: Arc<Metrics>) -> Instrumented<S> {
        Instrumented { inner, metrics }
    }
}

impl<S: Store> Instrumented<S> {
    /// Runs one store call: its latency and error recorded, inside a `store` span (a debug
    /// span, so it costs nothing unless traces or debug logs are on; the trace shows it as a
    /// child of the call's span, named `store.<op>`).
    ///
    /// It takes the call as a closure, not a future: a future passed to an `async fn` is kept
    /// twice in its state (the argument, then the awaited value), and every caller above moves
    /// that state; built inside, the store call's future is held once.
    async fn measure<T, F>(&self, op: StoreOp, call: impl FnOnce() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        use tracing::Instrument as _;
        let span = tracing::debug_span!(
            target: "vod_signer::store",
            "store",
            otel.name = op.span_name(),
            op = <&str>::from(op),
            otel.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = call().instrument(span.clone()).await;
        self.metrics.store_call(op, started, &result);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }
}

impl<S: Store> Store for Instrumented<S> {
    async fn insert_issued(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        ttl_seconds: u64,
        subject: &str,
    ) -> Result<bool, StoreError> {
        self.measure(StoreOp::Issue, || {
            self.inner.insert_issued(sig, now, ttl_seconds, subject)
        })
        .await
    }

    async fn admit(&self, admission: Admission<'_>) -> Result<bool, StoreError> {
        self.measure(StoreOp::Admit, || self.inner.admit(admission))
            .await
    }

    async fn discard(&self, key: RecordKey<'_>) -> Result<(), StoreError> {
        self.measure(StoreOp::Discard, || self.inner.discard(key))
            .await
    }

    async fn list_subject(
        &self,
        subject: &str,
        after: Option<&ListCursor>,
        count: usize,
        expired_before: i64,
    ) -> Result<Vec<Listed>, StoreError> {
        self.measure(StoreOp::List, || {
            self.inner
                .list_subject(subject, after, count, expired_before)
        })
        .await
    }

    async fn revoke_in_subject(
        &self,
        key: RecordKey<'_>,
        subject: &str,
        now: i64,
    ) -> Result<RecordState, StoreError> {
        self.measure(StoreOp::Revoke, || {
            self.inner.revoke_in_subject(key, subject, now)
        })
        .await
    }

    async fn status(&self, sig: RecordRef<'_>) -> Result<RecordState, StoreError> {
        self.measure(StoreOp::Status, || self.inner.status(sig))
            .await
    }

    async fn consume(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        idempotency_key: &str,
    ) -> Result<ConsumeOutcome, StoreError> {
        self.measure(StoreOp::Consume, || {
            self.inner.consume(sig, now, idempotency_key)
        })
        .await
    }

    async fn revoke(&self, sig: RecordRef<'_>, now: i64) -> Result<RecordState, StoreError> {
        self.measure(StoreOp::Revoke, || self.inner.revoke(sig, now))
            .await
    }

    async fn charge_quotas(&self, group: &[Charge]) -> Result<QuotaOutcome, StoreError> {
        self.measure(StoreOp::Quota, || self.inner.charge_quotas(group))
            .await
    }

    fn record_count(&self) -> Option<usize> {
        self.inner.record_count()
    }

    fn accepts_issues(&self) -> Result<(), StoreError> {
        self.inner.accepts_issues()
    }

    fn unsafe_to_serve(&self) -> Option<String> {
        self.inner.unsafe_to_serve()
    }

    fn memory(&self) -> Option<MemoryStatus> {
        self.inner.memory()
    }

    /// Health pings are measured but get no span: they belong to no call.
    async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.ping().await;
        self.metrics.store_call(StoreOp::Ping, started, &result);
        result
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    let local: Option<SocketAddr> = listener.local_addr().ok();
    if let Some(addr) = local {
        tracing::info!(addr = %addr, "serving metrics");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
