//! The `SignatureService` RPCs (SPEC section 3): wires the codec, the keys and the store.
//!
//! Every refusal is a [`Refusal`]: a [`Reason`] and a sentence for a person. It becomes a gRPC
//! status whose message starts with the reason token and which carries a
//! `google.rpc.ErrorInfo` with the same reason and domain `vodsigner`. Messages never quote a
//! key or a whole signature.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::{Instrument as _, debug, info};

use crate::auth::{CallerPolicy, Credentials, Rpc};
use crate::events::{Event, EventKind, EventLog, NoEvents};
use crate::keys::SharedKeys;
use crate::metrics::Metrics;
use crate::proto;
use crate::proto::signature_service_server::SignatureService;
use crate::quota::{self, Quota, Scope};
use crate::reason::Reason;
use crate::signature::{self, Claims, Parsed, SignRequest, SignatureError, UploadPolicy};
use crate::store::{self, ConsumeOutcome, QuotaOutcome, RecordKey, Store, StoreError};

/// Domain of every `google.rpc.ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "vodsigner";
/// How many nonces IssueSignature tries before giving up (collisions are rare but real).
pub const MAX_NONCE_TRIES: usize = 8;
/// Longest `subject` accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest `idempotency_key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// A refused call: the reason and a sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The SPEC section 3 reason.
    pub reason: Reason,
    /// What went wrong, for a person; never a key or a whole signature.
    pub message: String,
    /// When a retry could succeed (quotas); sent as `google.rpc.RetryInfo` and in the
    /// ErrorInfo metadata (`retry_after_ms`).
    pub retry_after: Option<Duration>,
    /// Extra ErrorInfo metadata.
    pub metadata: Vec<(&'static str, String)>,
}

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
            retry_after: None,
            metadata: Vec::new(),
        }
    }

    /// A quota refusal: `RATE_LIMITED`, with when to retry.
    pub fn rate_limited(quota: &str, retry_after: Duration) -> Refusal {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        Refusal {
            retry_after: Some(retry_after),
            metadata: vec![("quota", quota.to_owned())],
            ..Refusal::new(
                Reason::RateLimited,
                format!("the {quota} quota is used up; retry in {seconds} s"),
            )
        }
    }

    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Reason::InvalidRequest, message)
    }
}

impl From<SignatureError> for Refusal {
    fn from(e: SignatureError) -> Refusal {
        let message = match &e {
            SignatureError::Expired { expire_time, .. } => {
                format!("signature expired at {}", rfc3339(*expire_time))
            }
            SignatureError::NotYetValid {
                current_time_stamp, ..
            } => {
                format!("signature is valid from {}", rfc3339(*current_time_stamp))
            }
            other => other.to_string(),
        };
        Refusal::new(e.reason(), message)
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        Refusal::new(
            e.reason(),
            format!("{e}; nothing was accepted, retry later"),
        )
    }
}

/// The gRPC code each reason travels with.
pub fn grpc_code(reason: Reason) -> Code {
    match reason {
        Reason::InvalidRequest | Reason::SignatureMalformed => Code::InvalidArgument,
        Reason::UnknownSecretId | Reason::SignatureMismatch | Reason::CallerUnauthenticated => {
            Code::Unauthenticated
        }
        Reason::SignatureExpired
        | Reason::SignatureNotYetValid
        | Reason::SignatureAlreadyUsed
        | Reason::SignatureRevoked
        | Reason::SignatureNotIssued
        | Reason::FileTooLarge
        | Reason::NoActiveKey => Code::FailedPrecondition,
        Reason::RateLimited => Code::ResourceExhausted,
        Reason::PermissionDenied => Code::PermissionDenied,
        Reason::StoreUnavailable => Code::Unavailable,
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        let mut metadata: HashMap<String, String> = r
            .metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        if let Some(after) = r.retry_after {
            metadata.insert("retry_after_ms".into(), after.as_millis().to_string());
        }
        let mut details = ErrorDetails::with_error_info(r.reason.as_str(), ERROR_DOMAIN, metadata);
        if let Some(after) = r.retry_after {
            details.set_retry_info(Some(after));
        }
        Status::with_error_details(
            grpc_code(r.reason),
            format!("{}: {}", r.reason, r.message),
            details,
        )
    }
}

/// Unix seconds as RFC 3339, e.g. `2026-11-24T10:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The service's tunables (SPEC section 5 flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// TTL when the request says 0, seconds.
    pub default_ttl: u64,
    /// Largest TTL a request may ask for, seconds.
    pub max_ttl: u64,
    /// Clock skew allowed on both ends of the window, seconds.
    pub leeway: u64,
    /// Calls served at once; more are shed with `RATE_LIMITED` rather than queued.
    pub max_concurrent_calls: usize,
    /// Issuance quotas.
    pub quotas: Vec<Quota>,
    /// Whether a request without `subject` may skip the per-subject quotas (else it is
    /// refused with `INVALID_REQUEST` while one is on).
    pub allow_missing_subject: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_ttl: 3600,
            max_ttl: signature::MAX_VALIDITY_SECONDS as u64,
            leeway: 60,
            max_concurrent_calls: 1024,
            quotas: Vec::new(),
            allow_missing_subject: false,
        }
    }
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The `SignatureService` implementation over a [`Store`].
pub struct Signer<S> {
    store: Arc<S>,
    keys: SharedKeys,
    policy: SharedPolicy,
    settings: Settings,
    in_flight: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
    events: Arc<dyn EventLog>,
}

/// The caller policy, swapped on reload; `None` lets every caller call everything.
pub type SharedPolicy = Arc<arc_swap::ArcSwapOption<CallerPolicy>>;

impl<S: Store> Signer<S> {
    /// A service issuing with `keys` and recording in `store`.
    pub fn new(
        store: Arc<S>,
        keys: SharedKeys,
        policy: SharedPolicy,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Signer<S> {
        let in_flight = tokio::sync::Semaphore::new(settings.max_concurrent_calls.max(1));
        Signer {
            store,
            keys,
            policy,
            settings,
            in_flight,
            metrics,
            events: Arc::new(NoEvents),
        }
    }

    /// Sends audit events to `events` (by default they are off).
    pub fn with_events(mut self, events: Arc<dyn EventLog>) -> Signer<S> {
        self.events = events;
        self
    }

    fn publish(&self, kind: EventKind, claims: Option<&Claims>, subject: &str, reason: &str) {
        self.events.publish(Event {
            kind,
            secret_id: claims.map(|c| c.secret_id.clone()).unwrap_or_default(),
            random: claims.map_or(0, |c| c.random),
            subject: subject.to_owned(),
            source_context: claims
                .and_then(|c| c.policy.source_context.clone())
                .unwrap_or_default(),
            reason: reason.to_owned(),
            time: unix_now(),
        });
    }

    /// Parses and authenticates a signature; its nonce joins the call's log span as soon as
    /// it is known, so even a forgery's refusal is logged with the nonce it claimed.
    fn authenticate(&self, signature: &str) -> Result<Parsed, Refusal> {
        let parsed = signature::parse(signature)?;
        let span = tracing::Span::current();
        span.record("secret_id", parsed.claims.secret_id.as_str());
        span.record("random", parsed.claims.random);
        self.keys.load().verify(&parsed)?;
        Ok(parsed)
    }

    /// Checks the caller against the policy (when there is one).
    fn authorize<R>(&self, rpc: Rpc, request: &Request<R>) -> Result<(), Refusal> {
        let Some(policy) = self.policy.load_full() else {
            return Ok(());
        };
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let certs = request.peer_certs();
        let client_cert = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let caller = policy
            .authorize(
                rpc,
                Credentials {
                    bearer,
                    client_cert,
                },
            )
            .map_err(|e| Refusal::new(e.reason(), e.to_string()))?;
        tracing::Span::current().record("caller", caller.name.as_str());
        Ok(())
    }

    /// Admits one call, or sheds it when `max_concurrent_calls` are already running: a fast
    /// refusal the client can retry beats a queue that times everyone out.
    fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
        self.in_flight.try_acquire().map_err(|_| {
            Refusal::new(
                Reason::RateLimited,
                format!(
                    "the server is already handling its limit of {} calls; retry with backoff",
                    self.settings.max_concurrent_calls
                ),
            )
        })
    }

    fn leeway(&self) -> i64 {
        self.settings.leeway.min(i64::MAX as u64) as i64
    }

    /// IssueSignature: records a fresh nonce, then returns the signature.
    pub async fn issue(
        &self,
        req: proto::IssueSignatureRequest,
    ) -> Result<proto::IssueSignatureResponse, Refusal> {
        let ttl = if req.ttl_seconds == 0 {
            self.settings.default_ttl
        } else {
            req.ttl_seconds
        };
        if ttl > self.settings.max_ttl {
            return Err(Refusal::invalid(format!(
                "ttl_seconds {ttl} is above the maximum of {} seconds",
                self.settings.max_ttl
            )));
        }
        if req.subject.len() > MAX_SUBJECT_LEN {
            return Err(Refusal::invalid(format!(
                "subject is longer than {MAX_SUBJECT_LEN} bytes"
            )));
        }
        let policy = policy_from_proto(req.policy.unwrap_or_default());
        policy
            .validate()
            .map_err(|e| Refusal::invalid(format!("policy: {e}")))?;
        let keys = self.keys.load_full();
        let (secret_id, key) = if req.secret_id.is_empty() {
            // The active key, which a reload may have found removed: refuse rather than
            // fall back on another key nobody chose to issue with.
            let key = keys.active_key().cloned().ok_or_else(|| {
                Refusal::new(
                    Reason::NoActiveKey,
                    format!(
                        "the active key {:?} is not in the keys directory; nothing is issued until \
                         it is back (or another key is made active); verify, consume and revoke go on",
                        keys.active_id()
                    ),
                )
            })?;
            (keys.active_id(), key)
        } else {
            // A key named by the caller issues whenever it is loaded, active or not.
            let secret_id = req.secret_id.as_str();
            let key = keys.get(secret_id).cloned().ok_or_else(|| {
                let shown: String = secret_id.chars().take(128).collect();
                Refusal::new(
                    Reason::UnknownSecretId,
                    format!("no key with secret_id {shown:?}"),
                )
            })?;
            (secret_id, key)
        };

        self.charge_quotas(&req.subject, secret_id).await?;
        let now = unix_now();
        let record_ttl = ttl.saturating_add(self.settings.leeway);
        for _ in 0..MAX_NONCE_TRIES {
            let signed = signature::sign(
                &key,
                &SignRequest {
                    secret_id,
                    current_time_stamp: now,
                    expire_time: now.saturating_add(ttl as i64),
                    random: rand::random(),
                    one_time_valid: true,
                    policy: &policy,
                },
            );
            let fingerprint = signature::fingerprint(&signed.tag);
            let sig = store::Signature {
                key: RecordKey {
                    secret_id,
                    random: signed.claims.random,
                },
                fingerprint: &fingerprint,
            };
            if self.store.insert_issued(sig, now, record_ttl).await? {
                let span = tracing::Span::current();
                span.record("secret_id", secret_id);
                span.record("random", signed.claims.random);
                debug!(subject = %req.subject, "issued");
                self.publish(EventKind::Issued, Some(&signed.claims), &req.subject, "");
                return Ok(proto::IssueSignatureResponse {
                    signature: signed.signature,
                    claims: Some(claims_to_proto(signed.claims)),
                });
            }
            debug!(
                secret_id,
                random = signed.claims.random,
                "nonce collision, picking another"
            );
        }
        Err(Refusal::new(
            Reason::StoreUnavailable,
            format!("no free nonce after {MAX_NONCE_TRIES} tries; nothing was issued"),
        ))
    }

    /// Charges the issuance quotas; a request over one is refused with `RATE_LIMITED`.
    async fn charge_quotas(&self, subject: &str, secret_id: &str) -> Result<(), Refusal> {
        let quotas = &self.settings.quotas;
        if quotas.is_empty() {
            return Ok(());
        }
        let subject = (!subject.is_empty()).then_some(subject);
        if subject.is_none()
            && !self.settings.allow_missing_subject
            && quotas.iter().any(|q| q.scope == Scope::Subject)
        {
            return Err(Refusal::invalid(
                "subject is required: a per-subject quota is on",
            ));
        }
        for group in quota::charges(quotas, subject, secret_id) {
            if let QuotaOutcome::Refused { name, retry_after } =
                self.store.charge_quotas(&group).await?
            {
                return Err(Refusal::rate_limited(name, retry_after));
            }
        }
        Ok(())
    }

    /// VerifySignature: checks the signature and reports its state; changes nothing.
    pub async fn verify(
        &self,
        req: proto::VerifySignatureRequest,
    ) -> Result<proto::VerifySignatureResponse, Refusal> {
        let parsed = self.authenticate(&req.signature)?;
        let state = match signature::check_time(&parsed.claims, unix_now(), self.leeway()) {
            Err(SignatureError::Expired { .. }) => proto::SignatureState::Expired,
            Err(e) => return Err(e.into()),
            Ok(()) => state_of(
                self.store
                    .status(record(&parsed, &fingerprint_of(&parsed)))
                    .await?,
            ),
        };
        Ok(proto::VerifySignatureResponse {
            state: state as i32,
            claims: Some(claims_to_proto(parsed.claims)),
        })
    }

    /// ConsumeSignature: checks the signature and uses it up, atomically.
    pub async fn consume(
        &self,
        req: proto::ConsumeSignatureRequest,
    ) -> Result<proto::ConsumeSignatureResponse, Refusal> {
        let result = self.consume_checked(&req).await;
        match &result {
            Ok(_) => {}
            Err(refusal) => {
                // The nonce it claimed, when it parses at all (a second parse, on refusals only).
                let claims = signature::parse(&req.signature).ok().map(|p| p.claims);
                self.publish(
                    EventKind::ConsumeRefused,
                    claims.as_ref(),
                    "",
                    refusal.reason.as_str(),
                );
            }
        }
        result
    }

    async fn consume_checked(
        &self,
        req: &proto::ConsumeSignatureRequest,
    ) -> Result<proto::ConsumeSignatureResponse, Refusal> {
        if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(Refusal::invalid(format!(
                "idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_LEN} bytes"
            )));
        }
        let parsed = self.authenticate(&req.signature)?;
        signature::check_time(&parsed.claims, unix_now(), self.leeway())?;
        if let Some(max) = parsed.claims.policy.max_file_size {
            match req.file_size {
                None => {
                    return Err(Refusal::invalid(format!(
                        "file_size is required: the signature limits uploads to {max} bytes"
                    )));
                }
                Some(size) if size > max => {
                    return Err(Refusal::new(
                        Reason::FileTooLarge,
                        format!(
                            "file_size {size} is above the signature's maxFileSize {max}; the signature stays unused"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let fp = fingerprint_of(&parsed);
        match self
            .store
            .consume(record(&parsed, &fp), unix_now(), &req.idempotency_key)
            .await?
        {
            ConsumeOutcome::Consumed { at } => {
                self.publish(EventKind::Consumed, Some(&parsed.claims), "", "");
                Ok(proto::ConsumeSignatureResponse {
                    claims: Some(claims_to_proto(parsed.claims)),
                    consumed_at: at,
                })
            }
            ConsumeOutcome::Refused(status) => Err(refusal_for(status)),
        }
    }

    /// RevokeSignature: makes an unused signature unusable; reports the state before.
    pub async fn revoke(
        &self,
        req: proto::RevokeSignatureRequest,
    ) -> Result<proto::RevokeSignatureResponse, Refusal> {
        let parsed = self.authenticate(&req.signature)?;
        let previous = match signature::check_time(&parsed.claims, unix_now(), self.leeway()) {
            // An expired signature can never pass again: nothing to record.
            Err(SignatureError::Expired { .. }) => proto::SignatureState::Expired,
            _ => state_of(
                self.store
                    .revoke(record(&parsed, &fingerprint_of(&parsed)), unix_now())
                    .await?,
            ),
        };
        if previous == proto::SignatureState::Issued {
            self.publish(EventKind::Revoked, Some(&parsed.claims), "", "");
        }
        Ok(proto::RevokeSignatureResponse {
            previous_state: previous as i32,
        })
    }
}

fn fingerprint_of(parsed: &Parsed) -> String {
    signature::fingerprint(&parsed.tag)
}

fn record<'a>(parsed: &'a Parsed, fingerprint: &'a str) -> store::Signature<'a> {
    store::Signature {
        key: RecordKey {
            secret_id: &parsed.claims.secret_id,
            random: parsed.claims.random,
        },
        fingerprint,
    }
}

fn state_of(status: store::Status) -> proto::SignatureState {
    match status {
        store::Status::NotIssued => proto::SignatureState::NotIssued,
        store::Status::Issued => proto::SignatureState::Issued,
        store::Status::Consumed { .. } => proto::SignatureState::Consumed,
        store::Status::Revoked { .. } => proto::SignatureState::Revoked,
    }
}

fn refusal_for(status: store::Status) -> Refusal {
    match status {
        store::Status::Consumed { at } => Refusal::new(
            Reason::SignatureAlreadyUsed,
            format!("signature was consumed at {}", rfc3339(at)),
        ),
        store::Status::Revoked { at } => Refusal::new(
            Reason::SignatureRevoked,
            format!("signature was revoked at {}", rfc3339(at)),
        ),
        store::Status::NotIssued | store::Status::Issued => Refusal::new(
            Reason::SignatureNotIssued,
            "authentic, but there is no record of its issue (issued elsewhere, or the record is gone)",
        ),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The codec's policy from the proto's (empty strings mean absent).
pub fn policy_from_proto(p: proto::UploadPolicy) -> UploadPolicy {
    UploadPolicy {
        class_id: p.class_id,
        procedure: non_empty(p.procedure),
        task_priority: p.task_priority,
        task_notify_mode: non_empty(p.task_notify_mode),
        source_context: non_empty(p.source_context),
        session_context: non_empty(p.session_context),
        vod_sub_app_id: p.vod_sub_app_id,
        storage_region: non_empty(p.storage_region),
        max_file_size: p.max_file_size,
    }
}

/// The proto's policy from the codec's.
pub fn policy_to_proto(p: UploadPolicy) -> proto::UploadPolicy {
    proto::UploadPolicy {
        class_id: p.class_id,
        procedure: p.procedure.unwrap_or_default(),
        task_priority: p.task_priority,
        task_notify_mode: p.task_notify_mode.unwrap_or_default(),
        source_context: p.source_context.unwrap_or_default(),
        session_context: p.session_context.unwrap_or_default(),
        vod_sub_app_id: p.vod_sub_app_id,
        storage_region: p.storage_region.unwrap_or_default(),
        max_file_size: p.max_file_size,
    }
}

/// The proto's claims from the codec's.
pub fn claims_to_proto(c: Claims) -> proto::Claims {
    proto::Claims {
        secret_id: c.secret_id,
        current_time_stamp: c.current_time_stamp,
        expire_time: c.expire_time,
        random: c.random,
        one_time_valid: c.one_time_valid,
        policy: Some(policy_to_proto(c.policy)),
        extra: c.extra.into_iter().collect(),
        original: c.original,
    }
}

impl<S: Store> Signer<S> {
    /// Runs `call` if admitted, and turns its outcome into the gRPC answer.
    async fn admitted<R, T>(
        &self,
        rpc: Rpc,
        request: Request<R>,
        call: impl AsyncFnOnce(&Self, R) -> Result<T, Refusal>,
    ) -> Result<Response<T>, Status> {
        let span = tracing::info_span!(
            "call",
            rpc = rpc.name(),
            request_id = request_id(&request).as_deref().unwrap_or(""),
            caller = tracing::field::Empty,
            secret_id = tracing::field::Empty,
            random = tracing::field::Empty,
        );
        async {
            let _inflight = self.metrics.inflight();
            let started = std::time::Instant::now();
            let result = match self.authorize(rpc, &request) {
                Err(denied) => Err(denied),
                Ok(()) => match self.admit() {
                    Ok(_permit) => call(self, request.into_inner()).await,
                    Err(shed) => Err(shed),
                },
            };
            let rpc = rpc.name();
            let outcome = result.as_ref().map_or_else(|r| r.reason.as_str(), |_| "ok");
            self.metrics.request(rpc, outcome, started.elapsed());
            answer(result)
        }
        .instrument(span)
        .await
    }
}

/// The caller's request id (`x-request-id` metadata), bounded and printable, for the logs.
fn request_id<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("x-request-id")?.to_str().ok()?;
    Some(
        value
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect(),
    )
}

fn answer<T>(result: Result<T, Refusal>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => {
            debug!("ok");
            Ok(Response::new(v))
        }
        Err(r) => {
            info!(reason = %r.reason, detail = %r.message, "refused");
            Err(r.into())
        }
    }
}

fn event_to_proto(id: String, e: Event) -> proto::Event {
    let kind = match e.kind {
        EventKind::Issued => proto::EventKind::Issued,
        EventKind::Consumed => proto::EventKind::Consumed,
        EventKind::Revoked => proto::EventKind::Revoked,
        EventKind::ConsumeRefused => proto::EventKind::ConsumeRefused,
    };
    proto::Event {
        id,
        kind: kind as i32,
        secret_id: e.secret_id,
        random: e.random,
        subject: e.subject,
        source_context: e.source_context,
        reason: e.reason,
        time: e.time,
    }
}

/// The stream WatchEvents answers with.
pub type EventProtoStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> SignatureService for Signer<S> {
    type WatchEventsStream = EventProtoStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<EventProtoStream>, Status> {
        use tokio_stream::StreamExt as _;
        let started = std::time::Instant::now();
        let opened = self.authorize(Rpc::WatchEvents, &request).and_then(|()| {
            let req = request.into_inner();
            let stream = self.events.watch(&req.start_id).map_err(Refusal::invalid)?;
            let kinds = req.kinds;
            let stream = stream
                .map(|(id, e)| event_to_proto(id, e))
                .filter(move |e| kinds.is_empty() || kinds.contains(&e.kind))
                .map(Ok);
            Ok(Box::pin(stream) as EventProtoStream)
        });
        let outcome = opened.as_ref().map_or_else(|r| r.reason.as_str(), |_| "ok");
        self.metrics
            .request("WatchEvents", outcome, started.elapsed());
        answer(opened)
    }

    async fn issue_signature(
        &self,
        request: Request<proto::IssueSignatureRequest>,
    ) -> Result<Response<proto::IssueSignatureResponse>, Status> {
        self.admitted(Rpc::Issue, request, Self::issue).await
    }

    async fn verify_signature(
        &self,
        request: Request<proto::VerifySignatureRequest>,
    ) -> Result<Response<proto::VerifySignatureResponse>, Status> {
        self.admitted(Rpc::Verify, request, Self::verify).await
    }

    async fn consume_signature(
        &self,
        request: Request<proto::ConsumeSignatureRequest>,
    ) -> Result<Response<proto::ConsumeSignatureResponse>, Status> {
        self.admitted(Rpc::Consume, request, Self::consume).await
    }

    async fn revoke_signature(
        &self,
        request: Request<proto::RevokeSignatureRequest>,
    ) -> Result<Response<proto::RevokeSignatureResponse>, Status> {
        self.admitted(Rpc::Revoke, request, Self::revoke).await
    }
}
