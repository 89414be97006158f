//! The app server: signs its users in, asks vod-signer for an upload signature for each
//! upload (`IssueSignature`, the user as `subject`), receives the gateway's upload-complete
//! webhooks, and serves the page.
//!
//! | route | does |
//! |---|---|
//! | `GET /` | the page |
//! | `POST /login` | `{user, password}`; the demo account sets a session cookie |
//! | `POST /logout` | ends the session |
//! | `GET /me` | who is signed in, and the upload limit |
//! | `POST /signature` | signed in only: a fresh signature and where to upload |
//! | `POST /notify` | the gateway's webhook (bearer token), acknowledged with 200 |
//! | `GET /uploads` | signed in only: the user's upload-complete notifications |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use vod_signer::client::{Client, ClientError};
use vod_signer::proto::{IssueSignatureRequest, UploadPolicy};
use vod_signer::reason::Reason;

use crate::web::{DEMO_PASSWORD, DEMO_USER, UploadEvent, json, random_hex, refusal, uuid_ish};

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
    /// The bearer token the gateway's webhook must present.
    pub webhook_token: String,
}

/// An upload-complete notification as the app server keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    /// What the gateway sent.
    #[serde(flatten)]
    pub event: UploadEvent,
    /// The user the signature was issued to (found by its `sourceContext`), if known.
    pub user: Option<String>,
    /// When it arrived (Unix seconds).
    pub received_at: i64,
}

/// The app server's state.
pub struct AppState {
    config: AppConfig,
    /// Session cookie value → user.
    sessions: Mutex<HashMap<String, String>>,
    /// `sourceContext` of each issued signature → the user it was issued to.
    issued: Mutex<HashMap<String, String>>,
    /// Every upload-complete notification received, once each (by file id).
    notifications: Mutex<Vec<Notification>>,
}

impl AppState {
    /// A state with no sessions and no notifications.
    pub fn new(config: AppConfig) -> AppState {
        AppState {
            config,
            sessions: Mutex::default(),
            issued: Mutex::default(),
            notifications: Mutex::default(),
        }
    }

    /// Every upload-complete notification received so far.
    pub fn notifications(&self) -> Vec<Notification> {
        self.notifications.lock().unwrap().clone()
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

async fn notify(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let expected = format!("Bearer {}", state.config.webhook_token);
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(expected.as_bytes())) {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "BAD_WEBHOOK_TOKEN",
            "not the gateway",
        );
    }
    let Ok(event) = serde_json::from_slice::<UploadEvent>(&body) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "expected an upload event",
        );
    };
    let user = state
        .issued
        .lock()
        .unwrap()
        .get(&event.source_context)
        .cloned();
    let mut notifications = state.notifications.lock().unwrap();
    // A webhook is retried until acknowledged, so the same event can arrive twice.
    if notifications
        .iter()
        .any(|n| n.event.file_id == event.file_id)
    {
        tracing::info!(file_id = %event.file_id, "upload-complete notification again (acknowledged)");
        return json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "duplicate": true }),
        );
    }
    match &user {
        Some(user) => tracing::info!(
            %user, file_id = %event.file_id, source_context = %event.source_context,
            size = event.size, "upload complete"
        ),
        None => tracing::warn!(
            file_id = %event.file_id, source_context = %event.source_context,
            "upload complete for a sourceContext this app server did not issue"
        ),
    }
    notifications.push(Notification {
        event,
        user,
        received_at: vod_signer::clock::unix_now(),
    });
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
