//! The app server: signs its users in, asks vod-signer for an upload signature for each
//! upload (`IssueSignature`, the user as `subject`), receives vod-signer's signed upload
//! notifications (completed or abandoned), and serves the page.
//!
//! | route | does |
//! |---|---|
//! | `GET /` | the page |
//! | `POST /login` | `{user, password}`; the demo account sets a session cookie |
//! | `POST /logout` | ends the session |
//! | `GET /me` | who is signed in, and the upload limit |
//! | `POST /signature` | signed in only: a fresh signature and where to upload |
//! | `POST /notify` | vod-signer's push (Standard Webhooks signature checked), acknowledged with 200 |
//! | `GET /uploads` | signed in only: the user's upload notifications |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq as _;
use vod_signer::client::{Client, ClientError};
use vod_signer::notify::Secrets;
use vod_signer::notify::webhook::TOLERANCE;
use vod_signer::proto::{IssueSignatureRequest, UploadPolicy};
use vod_signer::reason::Reason;

use crate::web::{DEMO_PASSWORD, DEMO_USER, json, random_hex, refusal, uuid_ish};

/// The page, served at `/`.
pub const PAGE: &str = include_str!("page.html");

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "upload_flow_session";

/// How the app server is set up.
pub struct AppConfig {
    /// vod-signer, with the app server's credentials (role issuer).
    pub client: Client,
    /// The gateway's upload endpoint, handed to the page with each signature.
    pub upload_url: String,
    /// `maxFileSize` of each signature.
    pub max_file_size: u64,
    /// Lifetime of each signature, seconds.
    pub ttl_seconds: u64,
    /// What vod-signer signs its pushes with; None: every push is refused.
    pub webhook_secrets: Option<Secrets>,
}

/// A verified upload notification from vod-signer, as the app server keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    /// Its `webhook-id`: the same on every delivery of it, so the app keeps it once.
    pub webhook_id: String,
    /// `NewFileUpload` (Tencent VOD's event: the upload was stored) or `UploadAbandoned`.
    pub event_type: String,
    /// The stored file's id (empty when abandoned).
    pub file_id: String,
    /// The signature's `sourceContext`: how the app recognises its upload.
    pub source_context: String,
    /// Bytes stored.
    pub size: u64,
    /// Where the file is served.
    pub media_url: String,
    /// e.g. `mp4`.
    pub media_type: String,
    /// Completed after vod-signer had marked it abandoned.
    pub late: bool,
    /// The user the signature was issued to (found by its `sourceContext`), if known.
    pub user: Option<String>,
    /// When it arrived (Unix seconds).
    pub received_at: i64,
}

/// The event type of a completed upload (Tencent VOD's).
pub const NEW_FILE_UPLOAD: &str = "NewFileUpload";
/// The event type of an upload consumed and never completed (vod-signer's).
pub const UPLOAD_ABANDONED: &str = "UploadAbandoned";

/// The app server's state.
pub struct AppState {
    config: AppConfig,
    /// Session cookie value → user.
    sessions: Mutex<HashMap<String, String>>,
    /// `sourceContext` of each issued signature → the user it was issued to.
    issued: Mutex<HashMap<String, String>>,
    /// Every verified notification received, once each (by `webhook-id`).
    notifications: Mutex<Vec<Notification>>,
    /// Pushes refused: unsigned, forged, stale.
    refused: std::sync::atomic::AtomicUsize,
}

impl AppState {
    /// A state with no sessions and no notifications.
    pub fn new(config: AppConfig) -> AppState {
        AppState {
            config,
            sessions: Mutex::default(),
            issued: Mutex::default(),
            notifications: Mutex::default(),
            refused: Default::default(),
        }
    }

    /// Every verified notification received so far, once each.
    pub fn notifications(&self) -> Vec<Notification> {
        self.notifications.lock().unwrap().clone()
    }

    /// How many pushes were refused (no valid signature, or a stale timestamp).
    pub fn refused_pushes(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The signed-in user of a request, from its session cookie.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let sessions = self.sessions.lock().unwrap();
        cookies(headers)
            .filter(|(name, _)| *name == SESSION_COOKIE)
            .find_map(|(_, value)| sessions.get(value).cloned())
    }
}

/// The `name=value` pairs of a request's `Cookie` headers.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The app server's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/signature", post(signature))
        .route("/notify", post(notify))
        .route("/uploads", get(uploads))
        .with_state(state)
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        PAGE,
    )
        .into_response()
}

fn not_signed_in() -> Response {
    refusal(StatusCode::UNAUTHORIZED, "NOT_SIGNED_IN", "sign in first")
}

fn whoami(state: &AppState, user: &str) -> serde_json::Value {
    serde_json::json!({ "user": user, "max_file_size": state.config.max_file_size })
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "expected JSON {user, password}",
        );
    };
    let user_ok: bool = login.user.as_bytes().ct_eq(DEMO_USER.as_bytes()).into();
    let password_ok: bool = login
        .password
        .as_bytes()
        .ct_eq(DEMO_PASSWORD.as_bytes())
        .into();
    if !(user_ok && password_ok) {
        tracing::info!(user = %login.user, "sign-in refused");
        return refusal(
            StatusCode::UNAUTHORIZED,
            "BAD_CREDENTIALS",
            "unknown user or wrong password (the demo account is demo/demo)",
        );
    }
    let session = random_hex(24);
    state
        .sessions
        .lock()
        .unwrap()
        .insert(session.clone(), login.user.clone());
    tracing::info!(user = %login.user, "signed in");
    let mut response = json(StatusCode::OK, &whoami(&state, &login.user));
    let cookie = format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a valid cookie"),
    );
    response
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut sessions = state.sessions.lock().unwrap();
    for (name, value) in cookies(&headers) {
        if name == SESSION_COOKIE {
            sessions.remove(value);
        }
    }
    let mut response = json(StatusCode::OK, &serde_json::json!({}));
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("upload_flow_session=; Path=/; Max-Age=0"),
    );
    response
}

async fn me(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match state.user(&headers) {
        Some(user) => json(StatusCode::OK, &whoami(&state, &user)),
        None => not_signed_in(),
    }
}

/// The HTTP status the page gets when vod-signer refuses to issue.
fn issue_status(error: &ClientError) -> StatusCode {
    match error.reason() {
        Some(Reason::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
        // NO_ACTIVE_KEY: vod-signer cannot issue until its active key is back; STORE_FULL:
        // until Redis has room again.
        Some(Reason::StoreUnavailable | Reason::StoreFull | Reason::NoActiveKey) | None => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        // Anything else is the app server's own mistake (its request or its credentials).
        Some(_) => StatusCode::BAD_GATEWAY,
    }
}

async fn signature(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(user) = state.user(&headers) else {
        return not_signed_in();
    };
    // The upload's id in the app: the gateway's notification carries it back.
    let source_context = format!("{user}/{}", uuid_ish());
    let request = IssueSignatureRequest {
        ttl_seconds: state.config.ttl_seconds,
        subject: user.clone(),
        policy: Some(UploadPolicy {
            source_context: source_context.clone(),
            max_file_size: Some(state.config.max_file_size),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The request's span (a trace of its own: the page is not traced); with traces on, the
    // typed client hands it to vod-signer as `traceparent`, and the page hands it to the
    // gateway, so the upload joins the same trace.
    let span = tracing::info_span!("POST /signature", otel.kind = "server");
    let traceparent = {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        vod_signer::api::propagation::traceparent(&span.context())
    };
    let issued = {
        use tracing::Instrument as _;
        state.config.client.issue(request).instrument(span).await
    };
    match issued {
        Ok(issued) => {
            let claims = issued.claims.unwrap_or_default();
            state
                .issued
                .lock()
                .unwrap()
                .insert(source_context.clone(), user.clone());
            // The nonce identifies the signature in logs; the signature itself is never logged.
            tracing::info!(%user, %source_context, nonce = claims.random, "IssueSignature: issued");
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "signature": issued.signature,
                    "upload_url": state.config.upload_url,
                    "source_context": source_context,
                    "expire_time": claims.expire_time,
                    "max_file_size": state.config.max_file_size,
                    "traceparent": traceparent,
                }),
            )
        }
        Err(error) => {
            let (reason, message) = crate::web::reason_of(&error);
            tracing::warn!(%user, %reason, %message, "IssueSignature refused");
            let mut response = refusal(issue_status(&error), &reason, message);
            if let ClientError::Refused {
                retry_after: Some(after),
                ..
            } = &error
            {
                let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

/// One Standard Webhooks header of a push.
fn webhook_header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// vod-signer's push: checked (signature over the raw body, timestamp within 5 minutes),
/// kept once per `webhook-id` (a push is retried until acknowledged, so it may come twice),
/// and acknowledged with 200. Anything not provably from vod-signer is refused 401.
async fn notify(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let refuse = |status: StatusCode, reason: &str, message: String| {
        state
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tracing::warn!(%reason, %message, "push refused");
        refusal(status, reason, message)
    };
    let Some(secrets) = &state.config.webhook_secrets else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_WEBHOOK_SECRET",
            "this app server was started without vod-signer's notification secret".into(),
        );
    };
    let (Some(id), Some(timestamp), Some(signature)) = (
        webhook_header(&headers, "webhook-id"),
        webhook_header(&headers, "webhook-timestamp"),
        webhook_header(&headers, "webhook-signature"),
    ) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "NOT_A_WEBHOOK",
            "webhook-id, webhook-timestamp and webhook-signature are required".into(),
        );
    };
    let now = vod_signer::clock::unix_now();
    if let Err(why) = secrets.verify_push(id, timestamp, signature, &body, now, TOLERANCE) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "BAD_WEBHOOK_SIGNATURE",
            why.to_string(),
        );
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "a signed push that is not JSON".into(),
        );
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let event_type = text(&event["EventType"]);
    if event_type != NEW_FILE_UPLOAD && event_type != UPLOAD_ABANDONED {
        // Acknowledged, or the sender would retry an event this app does not handle.
        tracing::info!(webhook_id = %id, %event_type, "push of an event type this app ignores");
        return json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "ignored": true }),
        );
    }
    let upload = &event["FileUploadEvent"];
    let info = &upload["MediaBasicInfo"];
    let source_context = text(&info["SourceInfo"]["SourceContext"]);
    let user = state.issued.lock().unwrap().get(&source_context).cloned();
    let notification = Notification {
        webhook_id: id.to_owned(),
        event_type,
        file_id: text(&upload["FileId"]),
        source_context,
        size: upload["MetaData"]["Size"].as_u64().unwrap_or(0),
        media_url: text(&info["MediaUrl"]),
        media_type: text(&info["Type"]),
        late: event["VodSigner"]["Late"].as_bool().unwrap_or(false),
        user,
        received_at: now,
    };
    let mut notifications = state.notifications.lock().unwrap();
    if notifications
        .iter()
        .any(|n| n.webhook_id == notification.webhook_id)
    {
        tracing::info!(webhook_id = %id, "the same push again (acknowledged)");
        return json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "duplicate": true }),
        );
    }
    let n = &notification;
    match (&n.user, n.event_type.as_str()) {
        (Some(user), NEW_FILE_UPLOAD) => tracing::info!(
            %user, file_id = %n.file_id, source_context = %n.source_context, size = n.size,
            late = n.late, "upload complete (vod-signer's push)"
        ),
        (Some(user), _) => tracing::warn!(
            %user, source_context = %n.source_context,
            "upload abandoned: consumed, never completed (vod-signer's push)"
        ),
        (None, _) => tracing::warn!(
            event_type = %n.event_type, source_context = %n.source_context,
            "a push for a sourceContext this app server did not issue"
        ),
    }
    notifications.push(notification);
    json(StatusCode::OK, &serde_json::json!({ "ok": true }))
}

async fn uploads(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(user) = state.user(&headers) else {
        return not_signed_in();
    };
    let mine: Vec<Notification> = state
        .notifications()
        .into_iter()
        .filter(|n| n.user.as_deref() == Some(user.as_str()))
        .collect();
    json(StatusCode::OK, &mine)
}
