//! A typed client for vod-signer, for app servers and upload gateways written in Rust.
//!
//! It connects over plaintext, TLS or mTLS, adds a bearer token when given, bounds every
//! call with a deadline, turns refusals into [`Refused`] with the SPEC section 3 [`Reason`],
//! and retries only what is safe to retry: verify, revoke, CompleteUpload (a repeat with the
//! same file id answers the same success), PullEvents and ConfirmEvents, and consume only with
//! an idempotency key (one is made up per call when the caller gives none), so a retry after
//! an unknown outcome can never use a signature twice. IssueSignature is never retried: each
//! attempt would mint another signature and count against the subject's quotas.
//!
//! A retry follows an outcome that is unknown or transient (`STORE_UNAVAILABLE`, a broken
//! connection, a deadline) or a `RATE_LIMITED` that carries `google.rpc.RetryInfo` (a quota,
//! or the server shedding load). It waits for an exponential backoff with jitter (backon), and
//! never less than the RetryInfo delay; a wait that would end past the call's budget ends the
//! call with the refusal instead, so the caller sees `retry_after` at once.
//!
//! Every call carries the W3C `traceparent` of the caller's current `tracing` span when the
//! caller exports traces with `tracing-opentelemetry`: vod-signer's span of the call then
//! joins the caller's trace.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use crate::proto::signature_service_client::SignatureServiceClient;
use crate::proto::{
    CompleteUploadRequest, CompleteUploadResponse, ConfirmEventsRequest, ConsumeSignatureRequest,
    ConsumeSignatureResponse, IssueSignatureRequest, IssueSignatureResponse, Notification,
    PullEventsRequest, RevokeSignatureRequest, RevokeSignatureResponse, VerifySignatureRequest,
    VerifySignatureResponse,
};
use crate::reason::Reason;

/// TLS settings of a client.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM CA bundle that signs the server's certificate (none: the system's roots are not
    /// loaded, so give one).
    pub ca_pem: Option<String>,
    /// PEM client certificate and key, for mTLS.
    pub identity: Option<(String, String)>,
    /// The name the server certificate must carry (default: the endpoint's host).
    pub domain: Option<String>,
}

/// How to reach vod-signer.
#[derive(Clone)]
pub struct ClientConfig {
    /// `http://host:50051`, or `https://host:50051` with `tls`.
    pub endpoint: String,
    /// TLS; required for `https://`.
    pub tls: Option<ClientTls>,
    /// Bearer token sent as `authorization` metadata.
    pub token: Option<String>,
    /// Deadline of each attempt (sent as `grpc-timeout`, enforced on both sides).
    pub timeout: Duration,
    /// Attempts of a retryable call, the first included.
    pub attempts: u32,
    /// The most one call may take, its attempts and the waits between them together: no
    /// retry starts whose wait would end past it (None: `timeout` × `attempts`).
    pub budget: Option<Duration>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("budget", &self.budget)
            .finish()
    }
}

impl ClientConfig {
    /// Plaintext to `endpoint`, 2 s deadline, 3 attempts, a budget of 6 s.
    pub fn new(endpoint: impl Into<String>) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.into(),
            tls: None,
            token: None,
            timeout: Duration::from_secs(2),
            attempts: 3,
            budget: None,
        }
    }
}

/// A refused or failed call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// vod-signer refused with a reason (SPEC section 3).
    #[error("{reason}: {message}")]
    Refused {
        /// Why.
        reason: Reason,
        /// The server's sentence.
        message: String,
        /// When a retry could succeed (`google.rpc.RetryInfo`: quotas, a shed call).
        retry_after: Option<Duration>,
    },
    /// No answer with a reason: transport failure, deadline, or an unexpected status.
    #[error("vod-signer call failed: {code:?}: {message}")]
    Failed {
        /// The gRPC status code (`Unavailable` on a transport failure, `DeadlineExceeded`, ...).
        code: Code,
        /// What happened.
        message: String,
    },
}

impl ClientError {
    /// The refusal reason, if the server gave one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ClientError::Refused { reason, .. } => Some(*reason),
            ClientError::Failed { .. } => None,
        }
    }

    /// When the server said a retry could succeed (its `google.rpc.RetryInfo`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Refused { retry_after, .. } => *retry_after,
            ClientError::Failed { .. } => None,
        }
    }

    /// Whether the outcome is unknown or transient, so a retry may succeed (for consume: with
    /// the same idempotency key); otherwise the refusal is final. `RATE_LIMITED` is transient
    /// only with a RetryInfo: without one (the outstanding cap) only a revoke frees room.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Refused {
                reason,
                retry_after,
                ..
            } => match reason {
                Reason::StoreUnavailable => true,
                Reason::RateLimited => retry_after.is_some(),
                _ => false,
            },
            // tonic's server ends a call past its `grpc-timeout` with CANCELLED ("Timeout
            // expired"), not DEADLINE_EXCEEDED: the outcome is just as unknown.
            ClientError::Failed { code, .. } => matches!(
                code,
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            ),
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> ClientError {
        let reason = status
            .get_details_error_info()
            .and_then(|info| Reason::from_token(&info.reason))
            .or_else(|| {
                status
                    .message()
                    .split(':')
                    .next()
                    .and_then(Reason::from_token)
            });
        match reason {
            Some(reason) => ClientError::Refused {
                reason,
                message: status
                    .message()
                    .split_once(": ")
                    .map_or(status.message(), |(_, m)| m)
                    .to_owned(),
                retry_after: status.get_details_retry_info().and_then(|r| r.retry_delay),
            },
            None => ClientError::Failed {
                code: status.code(),
                message: status.message().to_owned(),
            },
        }
    }
}

/// Adds the bearer token, and the current span's trace context (`traceparent`), to every
/// call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let cx = tracing::Span::current().context();
        crate::api::propagation::inject(&cx, request.metadata_mut());
        Ok(request)
    }
}

/// The first retry's backoff before jitter; each retry doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest backoff before jitter (jitter adds up to as much again).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Slack on top of an attempt's deadline before the client stops waiting for its answer
/// itself: the server enforces the deadline and answers first.
const ANSWER_SLACK: Duration = Duration::from_millis(100);

/// The backoff of a call with `attempts` attempts: exponential from [`FIRST_BACKOFF`],
/// doubled per retry up to [`MAX_BACKOFF`], each delay `d` stretched to `d..2d` by jitter.
fn backoff(attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_factor(2.0)
        .with_max_times(attempts.saturating_sub(1) as usize)
        .with_jitter()
        // backon without its `std` feature seeds every process alike: seeded here, so
        // clients refused together do not come back together.
        .with_jitter_seed(rand::random())
}

/// The wait before the next attempt: backon's jittered `backoff` (None: no attempt left),
/// never less than the server's `retry_after`; None when the wait would not end within the
/// call's `remaining` budget (the caller gets the refusal, with its `retry_after`, at once).
fn retry_wait(
    backoff: Option<Duration>,
    retry_after: Option<Duration>,
    remaining: Duration,
) -> Option<Duration> {
    let wait = backoff?.max(retry_after.unwrap_or_default());
    (wait < remaining).then_some(wait)
}

/// A connected client; cheap to clone (one multiplexed HTTP/2 connection underneath).
#[derive(Clone)]
pub struct Client {
    inner: SignatureServiceClient<InterceptedService<Channel, Bearer>>,
    timeout: Duration,
    attempts: u32,
    budget: Option<Duration>,
}

impl Client {
    /// Connects (lazily: the first call dials, and later calls reconnect as needed).
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let failed = |message: String| ClientError::Failed {
            code: Code::InvalidArgument,
            message,
        };
        // rustls needs a process-wide crypto provider; ring, as the server and Redis use.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut endpoint = Channel::from_shared(config.endpoint.clone())
            .map_err(|e| failed(format!("bad endpoint {:?}: {e}", config.endpoint)))?
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            let mut settings = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca_pem {
                settings = settings.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                settings = settings.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &tls.domain {
                settings = settings.domain_name(domain);
            }
            endpoint = endpoint
                .tls_config(settings)
                .map_err(|e| failed(format!("bad TLS settings: {e}")))?;
        }
        let token = match &config.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| failed("the token is not valid metadata".into()))?,
            ),
            None => None,
        };
        let channel = endpoint.connect_lazy();
        Ok(Client {
            inner: SignatureServiceClient::with_interceptor(channel, Bearer(token)),
            timeout: config.timeout,
            attempts: config.attempts.max(1),
            budget: config.budget,
        })
    }

    /// Calls `call` up to `attempts` times, each attempt bounded by `timeout`, retrying what
    /// [`ClientError::is_retryable`] says may succeed, after [`retry_wait`].
    async fn retrying<T, F, Fut>(
        &self,
        attempts: u32,
        timeout: Duration,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(SignatureServiceClient<InterceptedService<Channel, Bearer>>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let budget = self
            .budget
            .unwrap_or_else(|| timeout.saturating_mul(attempts));
        let attempt = || {
            let answer =
                tokio::time::timeout(timeout + ANSWER_SLACK, call(self.inner.clone(), timeout));
            async move {
                match answer.await {
                    Ok(result) => result.map_err(ClientError::from),
                    Err(_) => Err(ClientError::Failed {
                        code: Code::DeadlineExceeded,
                        message: "no answer in time".into(),
                    }),
                }
            }
        };
        attempt
            .retry(backoff(attempts))
            .sleep(tokio::time::sleep)
            .when(ClientError::is_retryable)
            .adjust(|error, backoff| {
                retry_wait(
                    backoff,
                    error.retry_after(),
                    budget.saturating_sub(started.elapsed()),
                )
            })
            .await
    }

    /// `message` as a request with the attempt's deadline (sent as `grpc-timeout`).
    fn request<T>(message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        request
    }

    /// IssueSignature, one attempt: never retried, since each attempt would mint another
    /// signature and count against the subject's quotas (a refusal's `retry_after` says when
    /// a quota has room again).
    pub async fn issue(
        &self,
        request: IssueSignatureRequest,
    ) -> Result<IssueSignatureResponse, ClientError> {
        self.retrying(1, self.timeout, |mut c, timeout| {
            let request = Client::request(request.clone(), timeout);
            async move { c.issue_signature(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// VerifySignature (changes nothing, so always safe to retry).
    pub async fn verify(&self, signature: &str) -> Result<VerifySignatureResponse, ClientError> {
        let message = VerifySignatureRequest {
            signature: signature.to_owned(),
        };
        self.retrying(self.attempts, self.timeout, |mut c, timeout| {
            let request = Client::request(message.clone(), timeout);
            async move { c.verify_signature(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// ConsumeSignature with `file_size`; retried with one idempotency key (the given one, or
    /// a fresh random one), so a retry after a lost reply gets the same success and never a
    /// second use.
    pub async fn consume(
        &self,
        signature: &str,
        file_size: Option<u64>,
        idempotency_key: Option<&str>,
    ) -> Result<ConsumeSignatureResponse, ClientError> {
        let key = idempotency_key.map_or_else(
            || format!("client-{:032x}", rand::random::<u128>()),
            str::to_owned,
        );
        let message = ConsumeSignatureRequest {
            signature: signature.to_owned(),
            file_size,
            idempotency_key: key,
        };
        self.retrying(self.attempts, self.timeout, |mut c, timeout| {
            let request = Client::request(message.clone(), timeout);
            async move { c.consume_signature(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// RevokeSignature (idempotent, so safe to retry).
    pub async fn revoke(&self, signature: &str) -> Result<RevokeSignatureResponse, ClientError> {
        let message = RevokeSignatureRequest {
            signature: signature.to_owned(),
        };
        self.retrying(self.attempts, self.timeout, |mut c, timeout| {
            let request = Client::request(message.clone(), timeout);
            async move { c.revoke_signature(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// CompleteUpload, the gateway's call once the file is stored (role `consumer`). Retried
    /// with the same arguments: the server answers a repeat with the same `file_id` with the
    /// first call's success (`completed_at` included), and refuses another `file_id`
    /// (`UPLOAD_ALREADY_COMPLETED`).
    pub async fn complete_upload(
        &self,
        request: CompleteUploadRequest,
    ) -> Result<CompleteUploadResponse, ClientError> {
        self.retrying(self.attempts, self.timeout, |mut c, timeout| {
            let request = Client::request(request.clone(), timeout);
            async move { c.complete_upload(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// PullEvents (`--notify-mode pull`; roles `issuer`, `admin`): up to `max` (0: 16)
    /// notifications, the server waiting up to `wait_seconds` (at most 5) for a first one;
    /// each attempt's deadline is the client's timeout plus that wait. Retried on transient
    /// failures, which is harmless but not free: what a lost reply carried stays pending and
    /// is handed out again once unconfirmed for 30 s. Confirm each by its handle
    /// ([`Client::confirm_events`]) once it is processed.
    pub async fn pull_events(
        &self,
        max: u32,
        wait_seconds: u32,
    ) -> Result<Vec<Notification>, ClientError> {
        let message = PullEventsRequest { max, wait_seconds };
        let timeout = self.timeout + Duration::from_secs(u64::from(wait_seconds));
        self.retrying(self.attempts, timeout, |mut c, timeout| {
            let request = Client::request(message, timeout);
            async move {
                c.pull_events(request)
                    .await
                    .map(|r| r.into_inner().notifications)
            }
        })
        .await
    }

    /// ConfirmEvents: the pulled notifications with these handles were processed; answers
    /// how many were still unconfirmed. Idempotent, so safe to retry (a retry after a lost
    /// reply answers 0 for what the first attempt confirmed).
    pub async fn confirm_events(
        &self,
        handles: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<u32, ClientError> {
        let message = ConfirmEventsRequest {
            handles: handles.into_iter().map(Into::into).collect(),
        };
        self.retrying(self.attempts, self.timeout, |mut c, timeout| {
            let request = Client::request(message.clone(), timeout);
            async move {
                c.confirm_events(request)
                    .await
                    .map(|r| r.into_inner().confirmed)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_wait_is_the_backoff_or_the_servers_retry_info_whichever_is_longer() {
        let plenty = Duration::from_secs(60);
        assert_eq!(retry_wait(Some(70 * MS), None, plenty), Some(70 * MS));
        assert_eq!(
            retry_wait(Some(70 * MS), Some(400 * MS), plenty),
            Some(400 * MS)
        );
        // A RetryInfo shorter than the backoff does not hurry the retry.
        assert_eq!(
            retry_wait(Some(70 * MS), Some(10 * MS), plenty),
            Some(70 * MS)
        );
    }

    #[test]
    fn no_retry_when_attempts_are_used_up_or_the_wait_outlasts_the_budget() {
        assert_eq!(retry_wait(None, Some(MS), Duration::from_secs(60)), None);
        // A quota's RetryInfo of an hour: the refusal now, not a useless wait.
        let hour = Duration::from_secs(3600);
        assert_eq!(
            retry_wait(Some(70 * MS), Some(hour), Duration::from_secs(5)),
            None
        );
        assert_eq!(retry_wait(Some(70 * MS), None, 70 * MS), None);
        assert_eq!(retry_wait(Some(70 * MS), None, 71 * MS), Some(70 * MS));
    }

    #[test]
    fn the_backoff_doubles_with_jitter_up_to_its_cap_and_stops_with_the_attempts() {
        use backon::BackoffBuilder as _;
        for _ in 0..50 {
            let delays: Vec<Duration> = backoff(8).build().collect();
            assert_eq!(delays.len(), 7, "one wait between two of 8 attempts");
            for (i, delay) in delays.iter().enumerate() {
                let base = (FIRST_BACKOFF * (1 << i)).min(MAX_BACKOFF);
                assert!(
                    *delay >= base && *delay < base * 2,
                    "retry {i}: {delay:?} outside [{base:?}, {:?})",
                    base * 2
                );
            }
        }
        assert_eq!(backoff(1).build().count(), 0);
        // Jitter: two calls do not wait alike.
        let runs: Vec<Vec<Duration>> = (0..4).map(|_| backoff(4).build().collect()).collect();
        assert!(runs.windows(2).any(|w| w[0] != w[1]), "{runs:?}");
    }

    #[test]
    fn rate_limited_is_retryable_only_with_a_retry_info() {
        let refused = |reason, retry_after| ClientError::Refused {
            reason,
            message: String::new(),
            retry_after,
        };
        assert!(refused(Reason::RateLimited, Some(100 * MS)).is_retryable());
        assert!(!refused(Reason::RateLimited, None).is_retryable());
        assert!(refused(Reason::StoreUnavailable, None).is_retryable());
        assert!(!refused(Reason::StoreFull, None).is_retryable());
        assert!(!refused(Reason::UploadAlreadyCompleted, None).is_retryable());
    }

    #[test]
    fn a_refusal_carries_its_retry_info() {
        let status: Status = crate::refusal::Refusal::rate_limited("subject", 1500 * MS).into();
        let error = ClientError::from(status);
        assert_eq!(error.reason(), Some(Reason::RateLimited));
        assert_eq!(error.retry_after(), Some(1500 * MS));
        assert!(error.is_retryable());
    }
}
