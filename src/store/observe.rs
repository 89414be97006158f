//! What a store tells the rest of the service about each of its operations: which one, how
//! long it took and why it failed (metrics), inside a `store.<op>` trace span. The store
//! calls its observer itself, so a new operation needs one line here, not a forwarding
//! method in a decorator.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use super::StoreError;

/// A store operation: its `op` label, and `store.<op>` as its span's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum StoreOp {
    /// Recording a new signature (IssueSignature).
    Issue,
    /// Reading a record (VerifySignature).
    Status,
    /// ConsumeSignature's record step.
    Consume,
    /// RevokeSignature's and RevokeSubject's record step.
    Revoke,
    /// Charging the issuance quotas.
    Quota,
    /// Adding a signature to its subject's index.
    Admit,
    /// Deleting the record of a signature never handed out.
    Discard,
    /// A page of a subject's index.
    List,
    /// CompleteUpload's record step.
    Complete,
    /// Queueing an upload notification.
    Notify,
    /// The abandonment sweep's reads and record steps.
    Sweep,
    /// Reading, retrying and acknowledging queued notifications (push and pull).
    Deliver,
    /// A health ping (no span: it belongs to no call).
    Ping,
}

impl StoreOp {
    /// The `op` label.
    pub fn name(self) -> &'static str {
        self.into()
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
            StoreOp::Complete => "store.complete",
            StoreOp::Notify => "store.notify",
            StoreOp::Sweep => "store.sweep",
            StoreOp::Deliver => "store.deliver",
            StoreOp::Ping => "store.ping",
        }
    }
}

/// Receives every store operation's outcome (the metrics implement it).
pub trait StoreObserver: Send + Sync + 'static {
    /// `op` took `elapsed`; `error` says why it failed, if it did.
    fn observe(&self, op: StoreOp, elapsed: Duration, error: Option<&StoreError>);
}

/// A store's observer slot: empty until the composition root fills it, once.
#[derive(Default)]
pub struct Observed {
    observer: OnceLock<Arc<dyn StoreObserver>>,
}

impl Observed {
    /// Sends outcomes to `observer` from now on; a second observer is ignored (the first
    /// one keeps its counts whole).
    pub fn set(&self, observer: Arc<dyn StoreObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Runs one operation inside its debug-level `store.<op>` span (free unless traces or
    /// debug logs are on) and reports it.
    ///
    /// It takes the call as a closure, not a future: a future passed to an `async fn` is
    /// kept twice in its state (the argument, then the awaited value), and every caller
    /// above moves that state; built inside, the store call's future is held once.
    pub async fn run<T, F>(&self, op: StoreOp, call: impl FnOnce() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let span = tracing::debug_span!(
            target: "vod_signer::store",
            "store",
            otel.name = op.span_name(),
            op = op.name(),
            otel.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = call().instrument(span.clone()).await;
        self.report(op, started, &result);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    /// Runs one operation without a span (health pings and background work belong to no
    /// call) and reports it.
    pub async fn run_unspanned<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.report(op, started, &result);
        result
    }

    fn report<T>(&self, op: StoreOp, started: Instant, result: &Result<T, StoreError>) {
        if let Some(observer) = self.observer.get() {
            observer.observe(op, started.elapsed(), result.as_ref().err());
        }
    }
}
