//! The upload gateway (the VOD side): takes an upload with its signature, has vod-signer use
//! the signature up (`ConsumeSignature`) before it reads a byte of the file, stores the file,
//! serves it back, and tells the app server (a webhook retried until acknowledged).
//!
//! | route | does |
//! |---|---|
//! | `POST /upload` | header `x-vod-signature`, optional `x-file-name` (URL-encoded), the file as the raw body with a `Content-Length` |
//! | `OPTIONS /upload` | CORS preflight: the app server's origin may upload |
//! | `GET /files/{id}` | the stored file (the play URL) |

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio_stream::StreamExt as _;
use vod_signer::client::{Client, ClientError};
use vod_signer::reason::Reason;

use crate::web::{UploadEvent, WebhookClient, json, random_hex, reason_of, refusal};

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-vod-signature";
/// The header that carries the file's name, URL-encoded.
pub const FILE_NAME_HEADER: &str = "x-file-name";

/// Webhook attempts before the gateway gives up on an event (about 2.5 minutes of backoff).
const WEBHOOK_ATTEMPTS: u32 = 20;
/// Each webhook attempt's time limit.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// How the gateway is set up.
pub struct GatewayConfig {
    /// vod-signer, with the gateway's credentials (role consumer).
    pub client: Client,
    /// Where uploads are stored, one file each.
    pub storage: PathBuf,
    /// `http://host:port` under which `/files/{id}` is reachable.
    pub public_url: String,
    /// Origins whose pages may upload (the app server's).
    pub allowed_origins: Vec<String>,
    /// The app server's webhook.
    pub notify_url: String,
    /// The bearer token of the webhook.
    pub webhook_token: String,
}

/// A stored upload.
#[derive(Clone, Debug, Serialize)]
pub struct StoredFile {
    /// Its id (also its file name in the storage directory).
    pub id: String,
    /// The name the browser gave (decoded).
    pub name: String,
    /// The upload's `Content-Type`.
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// The signature's `sourceContext`.
    pub source_context: String,
}

/// The gateway's state.
pub struct GatewayState {
    config: GatewayConfig,
    files: Mutex<HashMap<String, StoredFile>>,
    webhook: WebhookClient,
    /// Webhook deliveries not finished yet (acknowledged or given up).
    webhooks_pending: AtomicUsize,
}

impl GatewayState {
    /// A gateway with no files stored yet.
    pub fn new(config: GatewayConfig) -> GatewayState {
        GatewayState {
            config,
            files: Mutex::default(),
            webhook: crate::web::webhook_client(),
            webhooks_pending: AtomicUsize::new(0),
        }
    }

    /// The files stored so far.
    pub fn files(&self) -> Vec<StoredFile> {
        self.files.lock().unwrap().values().cloned().collect()
    }

    /// Upload-complete webhooks still being delivered (retried until acknowledged).
    #[allow(
        dead_code,
        reason = "tests/upload_flow.rs waits on it; the example does not"
    )]
    pub fn webhooks_pending(&self) -> usize {
        self.webhooks_pending.load(Ordering::SeqCst)
    }

    /// Where a file's bytes are.
    pub fn path_of(&self, id: &str) -> PathBuf {
        self.config.storage.join(id)
    }
}

/// The gateway's routes, with CORS for the allowed origins.
pub fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/upload", post(upload).options(preflight))
        .route("/files/{id}", get(file))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// Adds `Access-Control-Allow-Origin` for an allowed origin to every answer.
async fn cors(State(state): State<Arc<GatewayState>>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Some(origin) = origin
        && state
            .config
            .allowed_origins
            .iter()
            .any(|allowed| allowed.as_bytes() == origin.as_bytes())
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, x-vod-signature, x-file-name, traceparent"),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            ),
        ],
    )
        .into_response()
}

/// The HTTP status of a vod-signer refusal.
fn status_of(reason: Reason) -> StatusCode {
    match reason {
        Reason::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::StoreUnavailable | Reason::StoreFull | Reason::RateLimited => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Reason::InvalidRequest | Reason::SignatureMalformed => StatusCode::BAD_REQUEST,
        // vod-signer refused the gateway's own credentials: not the uploader's fault.
        Reason::PermissionDenied | Reason::CallerUnauthenticated => StatusCode::BAD_GATEWAY,
        // Forged, expired, not yet valid, used, revoked or never issued.
        _ => StatusCode::FORBIDDEN,
    }
}

/// A refusal sent before the body was read. The body is dropped unread: hyper answers, then
/// closes the connection. Chromium reads such an early answer while it is still sending (tried
/// with 40 MiB against a 1 MiB limit); a gateway behind nginx also gets its lingering close.
fn refuse_unread(body: Body, status: StatusCode, reason: &str, message: String) -> Response {
    drop(body);
    let mut response = refusal(status, reason, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn upload(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let Some(signature) = signature else {
        return refuse_unread(
            body,
            StatusCode::UNAUTHORIZED,
            "MISSING_SIGNATURE",
            format!("send the upload signature in the {SIGNATURE_HEADER} header"),
        );
    };
    // The declared size, checked against the signature's maxFileSize before any byte of the
    // body is read; the HTTP layer then delivers exactly that many bytes or an error.
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = length else {
        return refuse_unread(
            body,
            StatusCode::LENGTH_REQUIRED,
            "LENGTH_REQUIRED",
            "send the file with a Content-Length".into(),
        );
    };
    let name = headers
        .get(FILE_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            vod_signer::signature::decode_component(v)
                .ok()
                .map(|n| n.into_owned())
        })
        .unwrap_or_else(|| "upload.bin".into());
    // Served back as is only for media types: never text/html from the gateway's origin.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.starts_with("video/") || t.starts_with("audio/"))
        .unwrap_or("application/octet-stream")
        .to_owned();

    // One idempotency key per upload attempt: the typed client retries a consume whose outcome
    // it did not learn with this key, and gets the same success. It is made here, never taken
    // from the uploader, or a replay could present the original key and pass.
    let attempt = format!("upload-{}", random_hex(16));
    // With traces on, this request's span continues the trace the page was given with the
    // signature (its `traceparent` header), and the typed client passes it to vod-signer.
    let span = tracing::info_span!("POST /upload", otel.kind = "server");
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let _ = span.set_parent(vod_signer::api::propagation::extract(&headers));
    }
    let consumed = {
        use tracing::Instrument as _;
        state
            .config
            .client
            .consume(signature, Some(length), Some(&attempt))
            .instrument(span)
            .await
    };
    let consumed = match consumed {
        Ok(consumed) => consumed,
        Err(error) => {
            let (reason, message) = reason_of(&error);
            let status = match &error {
                ClientError::Refused { reason, .. } => status_of(*reason),
                ClientError::Failed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::info!(%reason, size = length, "upload refused: ConsumeSignature said {message}");
            return refuse_unread(body, status, &reason, message);
        }
    };
    let claims = consumed.claims.unwrap_or_default();
    let source_context = claims.policy.unwrap_or_default().source_context;
    let nonce = claims.random;

    let id = format!("f{}", random_hex(12));
    let path = state.path_of(&id);
    if let Err(e) = store(&path, body, length).await {
        // The signature is used up: the app server has to issue a new one for another try.
        tracing::warn!(nonce, error = %e, "upload incomplete");
        return refusal(StatusCode::BAD_REQUEST, "UPLOAD_INCOMPLETE", e);
    }
    let stored = StoredFile {
        id: id.clone(),
        name,
        content_type,
        size: length,
        source_context: source_context.clone(),
    };
    state
        .files
        .lock()
        .unwrap()
        .insert(id.clone(), stored.clone());
    let play_url = format!("{}/files/{id}", state.config.public_url);
    tracing::info!(nonce, file_id = %id, %source_context, size = length, "ConsumeSignature: ok, upload stored");

    let event = UploadEvent {
        file_id: id.clone(),
        source_context: source_context.clone(),
        size: length,
        play_url: play_url.clone(),
        file_name: stored.name,
        consumed_at: consumed.consumed_at,
    };
    state.webhooks_pending.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(deliver(state.clone(), event));
    json(
        StatusCode::OK,
        &serde_json::json!({
            "file_id": id,
            "play_url": play_url,
            "source_context": source_context,
            "size": length,
        }),
    )
}

/// Writes the body to `path`: exactly `length` bytes, or an error and no file.
async fn store(path: &Path, body: Body, length: u64) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let target = path.to_owned();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut file = std::fs::File::create(&target)?;
        let mut written = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        file.sync_all()?;
        Ok(written)
    });
    let mut stream = body.into_data_stream();
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(format!("the upload broke off: {e}"));
                break;
            }
        }
    }
    drop(tx);
    let written = match writer.await {
        Ok(Ok(written)) => Some(written),
        Ok(Err(e)) => {
            failure.get_or_insert(format!("storing the upload failed: {e}"));
            None
        }
        Err(e) => {
            failure.get_or_insert(format!("storing the upload failed: {e}"));
            None
        }
    };
    if failure.is_none() && written != Some(length) {
        failure = Some(format!(
            "got {} bytes of the {length} announced",
            written.unwrap_or(0)
        ));
    }
    match failure {
        None => Ok(()),
        Some(failure) => {
            let _ = std::fs::remove_file(path);
            Err(failure)
        }
    }
}

/// Posts the event to the app server until it acknowledges (2xx), with exponential backoff.
async fn deliver(state: Arc<GatewayState>, event: UploadEvent) {
    deliver_until_done(&state, event).await;
    state.webhooks_pending.fetch_sub(1, Ordering::SeqCst);
}

async fn deliver_until_done(state: &GatewayState, event: UploadEvent) {
    let body = Bytes::from(serde_json::to_vec(&event).expect("serializable"));
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let result = crate::web::post_json(
            &state.webhook,
            &state.config.notify_url,
            &state.config.webhook_token,
            body.clone(),
            WEBHOOK_TIMEOUT,
        )
        .await;
        match result {
            Ok(status) if status.is_success() => {
                tracing::info!(file_id = %event.file_id, attempt, "upload-complete webhook acknowledged");
                return;
            }
            Ok(status) => {
                tracing::warn!(file_id = %event.file_id, attempt, %status, "upload-complete webhook refused")
            }
            Err(e) => {
                tracing::warn!(file_id = %event.file_id, attempt, error = %e, "upload-complete webhook failed")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    tracing::error!(file_id = %event.file_id, "upload-complete webhook: giving up");
}

async fn file(State(state): State<Arc<GatewayState>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(stored) = state.files.lock().unwrap().get(&id).cloned() else {
        return refusal(StatusCode::NOT_FOUND, "NOT_FOUND", "no such file");
    };
    let path = state.path_of(&stored.id);
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => bytes,
        _ => {
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "STORAGE_ERROR",
                "cannot read the file",
            );
        }
    };
    let content_type = HeaderValue::from_str(&stored.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        bytes,
    )
        .into_response()
}
