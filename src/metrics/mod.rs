//! Prometheus metrics (SPEC section 6 names): the registry and what records into it
//! ([`Metrics`]), what other layers report through their observer traits (`observers`), and
//! the `/metrics` HTTP endpoint ([`serve_metrics`]).
//!
//! Labels are bounded: `rpc` (one per RPC), `result` (`ok` or a reason token), `op` (store
//! operations), `cause` (why a store call failed). Nothing taken from a request (secret id,
//! subject) ever becomes a label.

mod endpoint;
mod observers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use strum::IntoEnumIterator as _;

pub use self::endpoint::serve_metrics;
use self::observers::TRACE_SPANS_DROPPED;
pub use self::observers::{SPANS_EXPORT_FAILED, SPANS_QUEUE_FULL, trace_spans_dropped};
use crate::notify::Outcome;
use crate::redis::MemoryStatus;
use crate::rpc::Rpc;
use crate::store::StoreOp;

/// The git revision the binary was built from (build.rs), or "unknown": the `revision` label
/// of `vodsigner_build_info`.
pub const REVISION: &str = env!("VOD_SIGNER_REVISION");

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    op: &'static str,
    cause: &'static str,
}

fn op_label(op: StoreOp) -> OpLabel {
    OpLabel { op: op.name() }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
    revision: &'static str,
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
    store_errors: Family<ErrorLabels, Counter>,
    admission_wait: Histogram,
    inflight: Gauge,
    store_up: Gauge,
    store_records: Gauge,
    active_key_missing: Gauge,
    /// Each notification outcome's counter, indexed by [`Outcome`].
    notifications: Vec<Counter>,
    notification_oldest: Gauge<f64, AtomicU64>,
    awaiting_completion: Gauge,
    abandoned: Counter,
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
            "RPC latency in seconds, from the call's admission (a slot of --max-concurrent-calls) to its answer; a shed call's until it was shed",
            request_duration.clone(),
        );
        let store_duration: HistogramFamily<OpLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "vodsigner_store_duration_seconds",
            "Store call latency in seconds",
            store_duration.clone(),
        );
        let store_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "vodsigner_store_errors",
            "Store calls that failed, by operation and cause (not_connected, timeout, connection, out_of_memory, replication, server, reply)",
            store_errors.clone(),
        );
        let admission_wait = latency_histogram();
        registry.register(
            "vodsigner_admission_wait_seconds",
            "How long each RPC waited for a slot of --max-concurrent-calls (0 when one was free)",
            admission_wait.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "vodsigner_inflight_requests",
            "RPCs in the server now, served or waiting for a slot",
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
        let notifications_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "vodsigner_notifications",
            "Upload notifications by outcome: queued, delivered (2xx, or confirmed by a puller), retried (an attempt failed), dead_lettered (past --notify-max-age)",
            notifications_family.clone(),
        );
        let notifications = Outcome::iter()
            .map(|o| {
                notifications_family
                    .get_or_create(&ResultLabel { result: o.name() })
                    .clone()
            })
            .collect();
        let notification_oldest = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "vodsigner_notification_oldest_seconds",
            "Age of the oldest notification not yet delivered or confirmed (0: none)",
            notification_oldest.clone(),
        );
        let awaiting_completion = Gauge::default();
        registry.register(
            "vodsigner_uploads_awaiting_completion",
            "Consumed uploads not yet completed nor abandoned",
            awaiting_completion.clone(),
        );
        let abandoned = Counter::default();
        registry.register(
            "vodsigner_uploads_abandoned",
            "Uploads marked ABANDONED: still consumed --completion-window after the consume",
            abandoned.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "vodsigner_build_info",
            "Always 1; the version and revision (git commit) labels say which build runs",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
                revision: REVISION,
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
            .map(|op| store_duration.get_or_create(&op_label(op)).clone())
            .collect();
        Metrics {
            registry,
            requests,
            by_rpc,
            store_latency,
            store_errors,
            admission_wait,
            inflight,
            store_up,
            store_records,
            active_key_missing,
            notifications,
            notification_oldest,
            awaiting_completion,
            abandoned,
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

    /// Records how long a call waited for a slot before it was admitted or shed.
    pub fn admission_wait(&self, waited: Duration) {
        self.admission_wait.observe(waited.as_secs_f64());
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
}

/// Decrements the in-flight gauge when dropped.
pub struct InflightGuard(Gauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
