//! A typed client for vod-signer, for app servers and upload gateways written in Rust.
//!
//! It connects over plaintext, TLS or mTLS, adds a bearer token when given, bounds every
//! call with a deadline, turns refusals into [`Refused`] with the SPEC section 3 [`Reason`],
//! and retries only what is safe to retry: issue, verify and revoke on `STORE_UNAVAILABLE` or
//! a broken connection, and consume only with an idempotency key (one is made up per call
//! when the caller gives none), so a retry after an unknown outcome can never use a signature
//! twice.
//!
//! Every call carries the W3C `traceparent` of the caller's current `tracing` span when the
//! caller exports traces with `tracing-opentelemetry`: vod-signer's span of the call then
//! joins the caller's trace.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use crate::proto::signature_service_client::SignatureServiceClient;
use crate::proto::{
    ConsumeSignatureRequest, ConsumeSignatureResponse, IssueSignatureRequest,
    IssueSignatureResponse, RevokeSignatureRequest, RevokeSignatureResponse,
    VerifySignatureRequest, VerifySignatureResponse,
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
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl ClientConfig {
    /// Plaintext to `endpoint`, 2 s deadline, 3 attempts.
    pub fn new(endpoint: impl Into<String>) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.into(),
            tls: None,
            token: None,
            timeout: Duration::from_secs(2),
            attempts: 3,
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
        /// When a retry could succeed (quotas).
        retry_after: Option<Duration>,
    },
    /// No answer with a reason: transport failure, deadline, or an unexpected status.
    #[error("vod-signer call failed: {code:?}: {message}")]
    Failed {
        /// The gRPC code.
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

    /// Whether the outcome is unknown or transient, so a retry may succeed (for consume: with
    /// the same idempotency key); otherwise the refusal is final.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Refused { reason, .. } => *reason == Reason::StoreUnavailable,
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

/// A connected client; cheap to clone (one multiplexed HTTP/2 connection underneath).
#[derive(Clone)]
pub struct Client {
    inner: SignatureServiceClient<InterceptedService<Channel, Bearer>>,
    timeout: Duration,
    attempts: u32,
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
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(SignatureServiceClient<InterceptedService<Channel, Bearer>>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let deadline = tokio::time::timeout(
                self.timeout + Duration::from_millis(100),
                call(self.inner.clone()),
            );
            let result = match deadline.await {
                Ok(result) => result.map_err(ClientError::from),
                Err(_) => Err(ClientError::Failed {
                    code: Code::DeadlineExceeded,
                    message: "no answer in time".into(),
                }),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.attempts => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// IssueSignature (retried on transient failures: a retry at worst leaves an unused record).
    pub async fn issue(
        &self,
        request: IssueSignatureRequest,
    ) -> Result<IssueSignatureResponse, ClientError> {
        self.retrying(|mut c| {
            let request = self.request(request.clone());
            async move { c.issue_signature(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// VerifySignature (changes nothing, so always safe to retry).
    pub async fn verify(&self, signature: &str) -> Result<VerifySignatureResponse, ClientError> {
        let message = VerifySignatureRequest {
            signature: signature.to_owned(),
        };
        self.retrying(|mut c| {
            let request = self.request(message.clone());
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
        self.retrying(|mut c| {
            let request = self.request(message.clone());
            async move { c.consume_signature(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// RevokeSignature (idempotent, so safe to retry).
    pub async fn revoke(&self, signature: &str) -> Result<RevokeSignatureResponse, ClientError> {
        let message = RevokeSignatureRequest {
            signature: signature.to_owned(),
        };
        self.retrying(|mut c| {
            let request = self.request(message.clone());
            async move { c.revoke_signature(request).await.map(|r| r.into_inner()) }
        })
        .await
    }
}
