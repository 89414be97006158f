//! What other layers report into the metrics: the store's calls and the lifecycle's
//! outcomes (through their observer traits, so those layers never name this one), and the
//! spans the trace exporter dropped (process-wide, as the exporter itself).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{ErrorLabels, Metrics};
use crate::notify::{LifecycleObserver, Outcome};
use crate::store::{StoreError, StoreObserver, StoreOp};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DropLabel {
    reason: &'static str,
}

/// Spans the trace exporter lost, process-wide like the tracer itself (every [`Metrics`]
/// exposes the same counter).
pub(super) static TRACE_SPANS_DROPPED: std::sync::LazyLock<Family<DropLabel, Counter>> =
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

impl LifecycleObserver for Metrics {
    fn notifications(&self, outcome: Outcome, n: u64) {
        self.notifications[outcome as usize].inc_by(n);
    }

    fn abandoned(&self, n: u64) {
        self.abandoned.inc_by(n);
    }

    fn backlog(&self, awaiting: u64, oldest_seconds: f64) {
        self.awaiting_completion
            .set(awaiting.min(i64::MAX as u64) as i64);
        self.notification_oldest.set(oldest_seconds);
    }
}

impl StoreObserver for Metrics {
    fn observe(&self, op: StoreOp, elapsed: Duration, error: Option<&StoreError>) {
        self.store_latency[op as usize].observe(elapsed.as_secs_f64());
        if let Some(e) = error {
            self.store_errors
                .get_or_create(&ErrorLabels {
                    op: op.name(),
                    cause: e.cause.name(),
                })
                .inc();
        }
    }
}
