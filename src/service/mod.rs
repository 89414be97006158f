//! The use cases (SPEC section 3): issue, verify, consume, revoke, following the events, and a
//! subject's signatures (list, revoke all, the outstanding cap).
//!
//! [`UseCases`] wires the codec, the keys, the store and the audit log, and answers in domain
//! types or a [`Refusal`]; it knows no gRPC (the `api` module adapts it). Time comes from an
//! injected [`Clock`], so tests move time instead of sleeping.
//!
//! One file per use case, named for it: `issue.rs`, `verify.rs`, `consume.rs`, `revoke.rs`,
//! `completion.rs` (CompleteUpload and the abandonment sweep), `notifications.rs` (pull and
//! confirm), `subjects.rs` (a subject's signatures). What several of them share about a
//! signature (authenticating it, its record, why a consume is refused) stays here.

mod completion;
mod consume;
mod issue;
mod notifications;
mod revoke;
mod subjects;
mod verify;

pub use self::completion::{CompleteRequest, CompletedUpload, SweepReport};
pub use self::notifications::{MAX_PULL, MAX_PULL_WAIT, Notification};
pub use self::subjects::{DEFAULT_PAGE_SIZE, ListRequest, Listing, MAX_PAGE_SIZE, Summary};

use std::sync::Arc;

use tokio_stream::StreamExt as _;

use crate::audit::{Event, EventKind, EventLog, EventStream, NoEvents, WatchError};
use crate::clock::{Clock, SystemClock, rfc3339};
use crate::keys::SharedKeys;
use crate::notify::{Lifecycle, LifecycleObserver, Unobserved};
use crate::quota::Quota;
use crate::reason::Reason;
use crate::refusal::Refusal;
use crate::signature::{self, Claims, Parsed, SignatureError, UploadPolicy};
use crate::store::{RecordKey, RecordRef, RecordState, Store, StoreError};

/// How many nonces IssueSignature tries before giving up (collisions are rare but real).
pub const MAX_NONCE_TRIES: usize = 8;
/// Longest `subject` accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest `idempotency_key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// The use cases' tunables (SPEC section 5 flags). `Default` is the one place their defaults
/// are written; the command line refers to it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// TTL when the request says 0, seconds.
    pub default_ttl: u64,
    /// Largest TTL a request may ask for, seconds.
    pub max_ttl: u64,
    /// Clock skew allowed on both ends of the window, seconds.
    pub leeway: u64,
    /// Issuance quotas.
    pub quotas: Vec<Quota>,
    /// Whether a request without `subject` may skip the per-subject quotas (else it is
    /// refused with `INVALID_REQUEST` while one is on).
    pub allow_missing_subject: bool,
    /// Most ISSUED, unexpired signatures one subject may have (0: no cap).
    pub max_outstanding_per_subject: u32,
    /// After the consume: the completion window and where notifications go.
    pub lifecycle: Lifecycle,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_ttl: 3600,
            max_ttl: signature::MAX_VALIDITY_SECONDS as u64,
            leeway: 60,
            quotas: Vec::new(),
            allow_missing_subject: false,
            max_outstanding_per_subject: 0,
            lifecycle: Lifecycle::default(),
        }
    }
}

/// IssueSignature's input.
#[derive(Clone, Debug, Default)]
pub struct IssueRequest {
    /// The key to issue with; empty: the active key.
    pub secret_id: String,
    /// Validity in seconds; 0: the default.
    pub ttl_seconds: u64,
    /// What the upload may do.
    pub policy: UploadPolicy,
    /// The end user it is for (audit and quotas; never in the signature).
    pub subject: String,
}

/// IssueSignature's answer.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The signature, Base64.
    pub signature: String,
    /// The claims signed into it: key, nonce, validity window, upload policy.
    pub claims: Claims,
}

/// What VerifySignature and RevokeSignature report about an authentic signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureState {
    /// Issued, unused.
    Issued,
    /// Used up.
    Consumed,
    /// Made unusable.
    Revoked,
    /// Past its expiry (plus leeway): it can never pass again.
    Expired,
    /// Authentic, but not on record.
    NotIssued,
    /// Consumed, and the upload was stored.
    Completed,
    /// Consumed, and no completion within the completion window.
    Abandoned,
}

impl From<RecordState> for SignatureState {
    fn from(state: RecordState) -> SignatureState {
        match state {
            RecordState::NotIssued => SignatureState::NotIssued,
            RecordState::Issued => SignatureState::Issued,
            RecordState::Consumed { .. } => SignatureState::Consumed,
            RecordState::Revoked { .. } => SignatureState::Revoked,
            RecordState::Completed { .. } => SignatureState::Completed,
            RecordState::Abandoned { .. } => SignatureState::Abandoned,
        }
    }
}

/// VerifySignature's answer.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Where it is in its life; `Expired` comes from the clock, without asking the store.
    pub state: SignatureState,
    /// The claims it carries, authenticated (the HMAC matched).
    pub claims: Claims,
}

/// ConsumeSignature's input.
#[derive(Clone, Debug, Default)]
pub struct ConsumeRequest {
    /// The signature, Base64.
    pub signature: String,
    /// The upload's size, checked against `maxFileSize`.
    pub file_size: Option<u64>,
    /// Repeating a consume with the same key after an unknown outcome gets the same success.
    pub idempotency_key: String,
}

/// ConsumeSignature's answer.
#[derive(Clone, Debug)]
pub struct Consumed {
    /// What the signature says.
    pub claims: Claims,
    /// When it was consumed (the first call's time on a repeat), Unix seconds.
    pub consumed_at: i64,
}

/// The use cases over a [`Store`].
pub struct UseCases<S> {
    store: Arc<S>,
    keys: SharedKeys,
    settings: Settings,
    events: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    lifecycle: Arc<dyn LifecycleObserver>,
}

impl<S: Store> UseCases<S> {
    /// Use cases issuing with `keys` and recording in `store`; no events, the system clock.
    pub fn new(store: Arc<S>, keys: SharedKeys, settings: Settings) -> UseCases<S> {
        UseCases {
            store,
            keys,
            settings,
            events: Arc::new(NoEvents),
            clock: Arc::new(SystemClock),
            lifecycle: Arc::new(Unobserved),
        }
    }

    /// Tells `observer` what happens to uploads and notifications.
    pub fn with_lifecycle_observer(mut self, observer: Arc<dyn LifecycleObserver>) -> UseCases<S> {
        self.lifecycle = observer;
        self
    }

    /// The use cases' settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sends audit events to `events`.
    pub fn with_events(mut self, events: Arc<dyn EventLog>) -> UseCases<S> {
        self.events = events;
        self
    }

    /// Reads the time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> UseCases<S> {
        self.clock = clock;
        self
    }

    /// The store the use cases record in.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// WatchEvents: the audit events from `start_id` (empty: from now), of `kinds` only
    /// (empty: all).
    pub async fn watch(
        &self,
        start_id: &str,
        kinds: Vec<EventKind>,
    ) -> Result<EventStream, Refusal> {
        let events = self.events.watch(start_id).await.map_err(|e| match e {
            WatchError::Unavailable(_) => {
                Refusal::new(Reason::StoreUnavailable, format!("{e}; retry later"))
            }
            WatchError::BadStart(_) | WatchError::Off => Refusal::invalid(e.to_string()),
        })?;
        Ok(Box::pin(events.filter(move |(_, e)| {
            kinds.is_empty() || kinds.contains(&e.kind)
        })))
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
            file_id: String::new(),
            time: self.clock.now(),
        });
    }

    /// Parses and authenticates a signature. Its nonce goes on the call's span and on the
    /// refusal as soon as it is known, so even a forgery's refusal is logged with the nonce
    /// it claimed.
    fn authenticate(&self, signature: &str) -> Result<Parsed, Refusal> {
        let parsed = signature::parse(signature)?;
        let claims = &parsed.claims;
        note_on_span(&claims.secret_id, claims.random);
        self.keys
            .load()
            .verify(&parsed)
            .map_err(|e| Refusal::from(e).about(&claims.secret_id, claims.random))?;
        Ok(parsed)
    }

    fn leeway(&self) -> i64 {
        self.settings.leeway.min(i64::MAX as u64) as i64
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
        match e.reason() {
            // Says itself what goes on and what frees room; a retry alone does not help.
            Reason::StoreFull => Refusal::new(Reason::StoreFull, e.message),
            reason => Refusal::new(reason, format!("{e}; nothing was accepted, retry later")),
        }
    }
}

/// The signature a call is about, on its span (debug logs and traces).
fn note_on_span(secret_id: &str, random: u32) {
    let span = tracing::Span::current();
    span.record("secret_id", secret_id);
    span.record("random", random);
}

/// Marks a refusal of a call about `parsed`'s signature (its log line names the nonce).
fn about<T>(parsed: &Parsed, result: Result<T, Refusal>) -> Result<T, Refusal> {
    result.map_err(|r| r.about(&parsed.claims.secret_id, parsed.claims.random))
}

/// The fingerprint of `parsed`'s tag its record is checked against (tells two signatures
/// with the same nonce apart).
fn fingerprint_of(parsed: &Parsed) -> String {
    signature::fingerprint(&parsed.tag)
}

/// The record of a parsed signature.
fn record_of<'a>(parsed: &'a Parsed, fingerprint: &'a str) -> RecordRef<'a> {
    RecordRef {
        key: RecordKey {
            secret_id: &parsed.claims.secret_id,
            random: parsed.claims.random,
        },
        fingerprint,
        issued_at: parsed.claims.current_time_stamp,
    }
}

/// Why a consume found the record in `state` refused.
fn refusal_for(state: RecordState) -> Refusal {
    match state {
        RecordState::Consumed { at } => Refusal::new(
            Reason::SignatureAlreadyUsed,
            format!("signature was consumed at {}", rfc3339(at)),
        ),
        RecordState::Completed { consumed_at, .. } | RecordState::Abandoned { consumed_at, .. } => {
            Refusal::new(
                Reason::SignatureAlreadyUsed,
                format!("signature was consumed at {}", rfc3339(consumed_at)),
            )
        }
        RecordState::Revoked { at } => Refusal::new(
            Reason::SignatureRevoked,
            format!("signature was revoked at {}", rfc3339(at)),
        ),
        RecordState::NotIssued | RecordState::Issued => Refusal::new(
            Reason::SignatureNotIssued,
            "authentic, but there is no record of its issue (issued elsewhere, or the record is gone)",
        ),
    }
}
