//! The per-call steps of the gRPC edge, one tower layer ([`CallLayer`]) around every RPC of
//! `SignatureService` (WatchEvents included). In order:
//!
//! 1. a debug-level `call` span per RPC (the RPC, the caller's `x-request-id`, later the
//!    caller, SecretId and nonce) and the in-flight gauge; with traces on, the span is also an
//!    OpenTelemetry server span, child of the caller's `traceparent`;
//! 2. [`check_caller`]: the caller policy (bearer token or client certificate);
//! 3. [`Admission`]: at most `--max-concurrent-calls` at once; up to `--max-queued-calls`
//!    more wait for a slot in arrival order (at most `--queue-timeout-ms`); the rest are shed
//!    at once;
//! 4. the service itself;
//! 5. [`typed_size`]: tonic's own refusal of an oversize request, typed like every other;
//! 6. the `refused` (or debug `ok`) log line (repeats folded, see `refusal_log`), with the
//!    signature the refusal is about (its private header, taken off the answer), and the
//!    answer counted by RPC and result with its latency.
//!
//! One layer rather than one per step: each layer would box the call's future and re-read
//! the RPC from the path, a cost paid on every call for nothing. Requests to other
//! services (health, reflection) pass through untouched. The steps see HTTP requests and
//! responses: a refusal's reason is the token its `grpc-message` starts with (the contract of
//! SPEC section 3).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http::{self, HeaderMap};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use tracing::{Instrument as _, debug};

use opentelemetry::trace::Status as SpanStatus;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::refusal_log::CallLog;
use crate::auth::{Credentials, SharedPolicy};
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::refusal::Refusal;
use crate::rpc::Rpc;

use super::refusal_log::RefusalLog;

/// The service's full name, as in `rpc.service` of its spans.
const SERVICE: &str = "vodsigner.v1.SignatureService";

/// The path prefix of the service's RPCs.
const SERVICE_PATH: &str = "/vodsigner.v1.SignatureService/";

/// Largest request message accepted (a real one is at most a few KiB; signatures are capped
/// at 16 KiB). Larger ones are refused before decoding, as `INVALID_REQUEST`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

// Header names looked up on every call, prepared once: a `&str` key is parsed and checked
// as a header name on each lookup.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static ABOUT: http::HeaderName = http::HeaderName::from_static(crate::refusal::ABOUT_HEADER);

/// Which RPC of `SignatureService` a request calls; `None` for other services.
fn rpc_of<B>(request: &http::Request<B>) -> Option<Rpc> {
    request
        .uri()
        .path()
        .strip_prefix(SERVICE_PATH)?
        .parse()
        .ok()
}

/// A response future of these layers.
type CallFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Takes the service that was made ready, leaving a clone in its place (tower's rule: the
/// clone may not be ready).
fn take_ready<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}

/// A refusal as the HTTP response tonic would send for it.
fn refused<B: Default>(refusal: Refusal) -> http::Response<B> {
    tonic::Status::from(refusal).into_http()
}

/// How a call ended, read from its response headers: unary answers carry `grpc-status` in the
/// headers only when refused (trailers-only); a success's status comes in the trailers.
enum Outcome {
    Ok,
    Refused {
        code: tonic::Code,
        label: &'static str,
        message: String,
    },
}

fn outcome_of(headers: &HeaderMap) -> Outcome {
    // The common case (a success) settled with one lookup of a prepared name.
    if !headers.contains_key(&GRPC_STATUS) {
        return Outcome::Ok;
    }
    match tonic::Status::from_header_map(headers) {
        None => Outcome::Ok,
        Some(status) if status.code() == tonic::Code::Ok => Outcome::Ok,
        Some(status) => {
            let message = status.message().to_owned();
            let token = message.split_once(": ").map_or("", |(t, _)| t);
            let label = Reason::from_token(token).map_or("error", Reason::as_str);
            Outcome::Refused {
                code: status.code(),
                label,
                message,
            }
        }
    }
}

/// Types tonic's refusal of a request above [`MAX_REQUEST_BYTES`]: tonic answers it with
/// OUT_OF_RANGE and a message of its own before any service code runs. No refusal of this
/// service travels as OUT_OF_RANGE, so every such answer is that cap: it becomes
/// `INVALID_REQUEST` with the reason token and an `ErrorInfo`, still without decoding.
pub fn typed_size<B: Default>(response: http::Response<B>) -> http::Response<B> {
    let out_of_range = response
        .headers()
        .get(&GRPC_STATUS)
        .is_some_and(|v| v.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    refused(Refusal::invalid(format!(
        "the request message is larger than the {} KiB limit; it was not decoded",
        MAX_REQUEST_BYTES / 1024
    )))
}

/// The caller's request id (`x-request-id` metadata), bounded and printable, for the logs.
fn request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(&X_REQUEST_ID)?.to_str().ok()?;
    Some(
        value
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect(),
    )
}

/// The caller's bearer token (`authorization: Bearer <token>`), if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// Checks the caller against the policy (when there is one): `CALLER_UNAUTHENTICATED`
/// without a known credential, `PERMISSION_DENIED` without the role. Answers the caller's
/// name (`None` without a policy), which also joins the call's span.
pub fn check_caller<B>(
    policy: &SharedPolicy,
    rpc: Rpc,
    request: &http::Request<B>,
) -> Result<Option<String>, Refusal> {
    let Some(policy) = policy.load_full() else {
        return Ok(None);
    };
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs());
    let credentials = Credentials {
        bearer: bearer(request.headers()),
        client_cert: certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref()),
    };
    match policy.authorize(rpc, credentials) {
        Ok(caller) => {
            tracing::Span::current().record("caller", caller.name.as_str());
            Ok(Some(caller.name.clone()))
        }
        Err(denied) => Err(Refusal::new(denied.reason(), denied.to_string())),
    }
}

/// The `RetryInfo` delay of a shed call: long enough for a full replica to answer what it
/// holds (calls take well under a millisecond of CPU), short next to a caller's deadline.
pub const SHED_RETRY_AFTER: Duration = Duration::from_millis(100);

/// How many calls a replica serves at once and how many may wait for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Calls served at once (`--max-concurrent-calls`).
    pub concurrent: usize,
    /// Calls that may wait for a slot beyond those (`--max-queued-calls`); 0: shed at once.
    pub queued: usize,
    /// How long a call may wait for a slot before it is shed (`--queue-timeout-ms`).
    pub wait: Duration,
}

/// Admits at most `concurrent` calls at once; the next `queued` wait for a slot in arrival
/// order, each at most `wait`; past either bound a call is shed with `RATE_LIMITED`.
///
/// Why a queue and not only shedding: a shed caller that comes straight back costs the
/// replica a decode, a refusal and an answer for no work done, so under a closed-loop
/// overload the CPU goes to refusing and goodput collapses (measured: 0.11x the capacity at
/// 6 400 streams, BENCHMARKS.md). A waiting call costs a parked future. Why a small
/// `concurrent`: calls past what Redis and the CPU serve in parallel only queue inside the
/// server, where they hold a store deadline; waiting here they hold none.
#[derive(Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    limits: AdmissionLimits,
}

/// One call's place in the queue, given back however the wait ends (the call's future may
/// be dropped mid-wait when its caller goes away or its deadline passes).
struct InQueue<'a>(&'a AtomicUsize);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// Admission within `limits`.
    pub fn new(limits: AdmissionLimits) -> Admission {
        let concurrent = limits.concurrent.max(1);
        Admission {
            slots: Arc::new(Semaphore::new(concurrent)),
            waiting: Arc::new(AtomicUsize::new(0)),
            limits: AdmissionLimits {
                concurrent,
                ..limits
            },
        }
    }

    /// A slot for one call, held until it answers: at once when one is free, else after a
    /// wait in the queue; a refusal when the queue is full or the wait ran out.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        // The common case without a timer or a queue entry. (Tokio's semaphore is fair: while
        // calls wait, a free slot goes to the first of them, never to a newcomer.)
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.limits.queued {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(self.shed());
        }
        let _in_queue = InQueue(&self.waiting);
        match tokio::time::timeout(self.limits.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.shed()),
        }
    }

    fn shed(&self) -> Refusal {
        // RetryInfo, like a quota's: the clients wait at least this long (plus their own
        // jitter) instead of coming straight back to a replica that is full.
        Refusal {
            retry_after: Some(SHED_RETRY_AFTER),
            ..Refusal::new(
                Reason::RateLimited,
                format!(
                    "the server is already handling its limit of {} calls and {} waiting; retry with backoff",
                    self.limits.concurrent, self.limits.queued
                ),
            )
        }
        .with_metadata("quota", "concurrency")
    }
}

/// Every per-call step of the module doc, around the gRPC routes.
#[derive(Clone)]
pub struct CallLayer {
    outcomes: Arc<Outcomes>,
    policy: SharedPolicy,
    admission: Admission,
    traces: bool,
}

/// Where each call's outcome is recorded; one `Arc`, so a call clones one pointer for both.
struct Outcomes {
    metrics: Arc<Metrics>,
    refusals: RefusalLog,
}

impl CallLayer {
    /// Records into `metrics`, checks callers against `policy` (as it is at each call), and
    /// admits calls within `limits`.
    pub fn new(metrics: Arc<Metrics>, policy: SharedPolicy, limits: AdmissionLimits) -> Self {
        CallLayer {
            outcomes: Arc::new(Outcomes {
                metrics,
                refusals: RefusalLog::new(),
            }),
            policy,
            admission: Admission::new(limits),
            traces: false,
        }
    }

    /// With `traces`, each `call` span is named and typed as an OpenTelemetry gRPC server span
    /// (`vodsigner.v1.SignatureService/<Method>`, kind server, `rpc.*` attributes, the status
    /// code and refusal reason), with the caller's W3C `traceparent` as its parent. Without,
    /// none of that work is done.
    pub fn with_traces(self, traces: bool) -> CallLayer {
        CallLayer { traces, ..self }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            steps: self.clone(),
        }
    }
}

/// The service of [`CallLayer`].
#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    steps: CallLayer,
}

impl<S, B, RB> Service<http::Request<B>> for Calls<S>
where
    B: Send + 'static,
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = CallFuture<http::Response<RB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let Some(rpc) = rpc_of(&request) else {
            return Box::pin(inner.call(request));
        };
        let started = Instant::now();
        let outcomes = self.steps.outcomes.clone();
        let inflight = outcomes.metrics.inflight();
        let traces = self.steps.traces;
        // Debug-level: at info only a refusal logs, with its fields (`refusal_log`).
        let span = if traces {
            server_span(rpc, request.headers())
        } else {
            tracing::debug_span!(
                "call",
                rpc = rpc.name(),
                request_id = tracing::field::Empty,
                caller = tracing::field::Empty,
                secret_id = tracing::field::Empty,
                random = tracing::field::Empty,
            )
        };
        let mut log = CallLog {
            request_id: request_id(request.headers()),
            ..CallLog::default()
        };
        if let Some(id) = &log.request_id {
            span.record("request_id", id.as_str());
        }
        let checked = span.in_scope(|| check_caller(&self.steps.policy, rpc, &request));
        let admission = self.steps.admission.clone();
        let call = async move {
            let admitted = match checked {
                Ok(caller) => {
                    log.caller = caller;
                    let permit = admission.admit().await;
                    // The latency histogram times the call from its admission: the server's
                    // time on it. The wait for a slot has its own.
                    let waited = started.elapsed();
                    outcomes.metrics.admission_wait(waited);
                    permit.map(|permit| (permit, Instant::now()))
                }
                Err(refusal) => Err(refusal),
            };
            let (mut response, started) = match admitted {
                Ok((_permit, at)) => (inner.call(request).await.map(typed_size), at),
                Err(refusal) => (Ok(refused(refusal)), started),
            };
            // The signature a refusal is about travels in a private header: taken off here.
            if let Ok(response) = &mut response
                && let Some(about) = response.headers_mut().remove(&ABOUT)
                && let Some((secret_id, random)) =
                    about.to_str().ok().and_then(|a| a.rsplit_once(':'))
            {
                log.secret_id = Some(secret_id.to_owned());
                log.random = random.parse().ok();
            }
            drop(inflight);
            let outcome = response.as_ref().map(|r| outcome_of(r.headers()));
            if traces && let Ok(outcome) = &outcome {
                record_outcome(&tracing::Span::current(), outcome);
            }
            let label = match outcome {
                Ok(Outcome::Ok) => {
                    debug!("ok");
                    "ok"
                }
                Ok(Outcome::Refused { label, message, .. }) => {
                    let detail = message.split_once(": ").map_or(&*message, |(_, d)| d);
                    let now = Instant::now();
                    outcomes.refusals.refused(rpc, label, &log, detail, now);
                    label
                }
                Err(_) => "error",
            };
            outcomes.metrics.request(rpc, label, started.elapsed());
            response
        };
        Box::pin(call.instrument(span))
    }
}

/// The `call` span with traces on: the same fields, plus the OpenTelemetry name and kind (the
/// debug log lines show them too), the RPC attributes (only the trace holds them) and the caller's
/// trace context as parent. Nothing from the request body is read here: no signature, key or
/// token can reach the span's attributes.
fn server_span(rpc: Rpc, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::debug_span!(
        "call",
        otel.name = format!("{SERVICE}/{}", rpc.name()),
        otel.kind = "server",
        rpc = rpc.name(),
        request_id = tracing::field::Empty,
        caller = tracing::field::Empty,
        secret_id = tracing::field::Empty,
        random = tracing::field::Empty,
    );
    // Before the span is first entered: the parent is fixed when the span starts.
    let _ = span.set_parent(super::propagation::extract(headers));
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", SERVICE);
    span.set_attribute("rpc.method", rpc.name());
    span
}

/// How the call ended, on its span: `rpc.grpc.status_code`, and for a refusal its reason token
/// as `error.type`. The span's status is Error only for the codes that mean a server fault
/// (the OpenTelemetry gRPC conventions: a refusal of a bad signature is not a fault), with
/// the reason token as the description; never the refusal's sentence.
fn record_outcome(span: &tracing::Span, outcome: &Outcome) {
    use tonic::Code;
    match outcome {
        Outcome::Ok => span.set_attribute("rpc.grpc.status_code", 0_i64),
        Outcome::Refused { code, label, .. } => {
            span.set_attribute("rpc.grpc.status_code", *code as i64);
            span.set_attribute("error.type", *label);
            if matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ) {
                span.set_status(SpanStatus::error(*label));
            }
        }
    }
}
