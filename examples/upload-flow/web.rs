//! What the app server and the upload gateway share: JSON answers, the webhook's payload and
//! its HTTP client, random ids, and [`start`], which runs both servers on their listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use vod_signer::client::{Client, ClientConfig, ClientError};

use crate::app::{AppConfig, AppState};
use crate::gateway::{GatewayConfig, GatewayState};

/// The demo account (the only one).
pub const DEMO_USER: &str = "demo";
/// The demo account's password.
pub const DEMO_PASSWORD: &str = "demo";

/// The gateway's upload-complete webhook, as the app server receives it on `POST /notify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadEvent {
    /// The stored file's id.
    pub file_id: String,
    /// The signature's `sourceContext`: how the app recognises its upload.
    pub source_context: String,
    /// Bytes stored.
    pub size: u64,
    /// Where the file is served.
    pub play_url: String,
    /// The name the browser gave.
    pub file_name: String,
    /// When vod-signer consumed the signature (Unix seconds).
    pub consumed_at: i64,
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_string(value).expect("serializable");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A refusal: `{reason, message}` with an HTTP status.
pub fn refusal(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    json(
        status,
        &serde_json::json!({ "reason": reason, "message": message.into() }),
    )
}

/// The reason token and message of a failed vod-signer call: the typed client's reason, or
/// `SIGNER_UNAVAILABLE` when the call got no answer with a reason.
pub fn reason_of(error: &ClientError) -> (String, String) {
    match error {
        ClientError::Refused {
            reason, message, ..
        } => (reason.as_str().to_owned(), message.clone()),
        ClientError::Failed { code, message } => (
            "SIGNER_UNAVAILABLE".to_owned(),
            format!("vod-signer did not answer ({code:?}: {message})"),
        ),
    }
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A random id shaped like a UUID (version 4 layout).
pub fn uuid_ish() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The webhook's HTTP client (plain HTTP/1.1).
pub type WebhookClient = HttpClient<HttpConnector, Full<Bytes>>;

/// A new webhook client.
pub fn webhook_client() -> WebhookClient {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

/// `POST url` with a JSON body and a bearer token, bounded by `timeout`: the status.
pub async fn post_json(
    client: &WebhookClient,
    url: &str,
    token: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let request = axum::http::Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read the acknowledgement to the end so the connection can be reused.
    let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
    Ok(status)
}

/// How to run the app server and the gateway.
#[derive(Clone, Debug)]
pub struct FlowOptions {
    /// vod-signer's endpoint, e.g. `http://127.0.0.1:50051`.
    pub vod_signer: String,
    /// Bearer token of the app server (role issuer), if vod-signer has a caller policy.
    pub issuer_token: Option<String>,
    /// Bearer token of the gateway (role consumer), if vod-signer has a caller policy.
    pub consumer_token: Option<String>,
    /// The app server's address (port 0: any free port).
    pub app_listen: SocketAddr,
    /// The gateway's address (port 0: any free port).
    pub gateway_listen: SocketAddr,
    /// Where the gateway stores uploads.
    pub storage: PathBuf,
    /// `maxFileSize` of every signature the app server asks for.
    pub max_file_size: u64,
    /// Lifetime of the signatures, seconds.
    pub ttl_seconds: u64,
}

/// The app server and the gateway, running; both stop when this is dropped.
pub struct Flow {
    /// `http://host:port` of the app server (open it in a browser).
    pub app_url: String,
    /// `http://host:port` of the gateway.
    pub gateway_url: String,
    /// The app server's state (sessions, notifications received).
    pub app: Arc<AppState>,
    /// The gateway's state (stored files).
    pub gateway: Arc<GatewayState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `http://addr`, with an unspecified IP replaced by loopback (a URL a browser can open).
fn url_of(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

fn client(endpoint: &str, token: Option<String>) -> Result<Client, String> {
    let mut config = ClientConfig::new(endpoint);
    config.token = token;
    Client::connect(config).map_err(|e| e.to_string())
}

/// Binds both listeners and serves the app server and the gateway in the background.
pub async fn start(options: FlowOptions) -> Result<Flow, String> {
    let app_listener = tokio::net::TcpListener::bind(options.app_listen)
        .await
        .map_err(|e| format!("app server on {}: {e}", options.app_listen))?;
    let gateway_listener = tokio::net::TcpListener::bind(options.gateway_listen)
        .await
        .map_err(|e| format!("upload gateway on {}: {e}", options.gateway_listen))?;
    let app_addr = app_listener.local_addr().map_err(|e| e.to_string())?;
    let gateway_addr = gateway_listener.local_addr().map_err(|e| e.to_string())?;
    let app_url = url_of(app_addr);
    let gateway_url = url_of(gateway_addr);
    std::fs::create_dir_all(&options.storage)
        .map_err(|e| format!("storage {}: {e}", options.storage.display()))?;

    // The gateway authenticates to the app's webhook with a secret they share.
    let webhook_token = random_hex(24);
    let mut allowed_origins = vec![app_url.clone()];
    if app_addr.ip().is_loopback() || app_addr.ip().is_unspecified() {
        allowed_origins.push(format!("http://localhost:{}", app_addr.port()));
    }

    let app = Arc::new(AppState::new(AppConfig {
        client: client(&options.vod_signer, options.issuer_token.clone())?,
        upload_url: format!("{gateway_url}/upload"),
        max_file_size: options.max_file_size,
        ttl_seconds: options.ttl_seconds,
        webhook_token: webhook_token.clone(),
    }));
    let gateway = Arc::new(GatewayState::new(GatewayConfig {
        client: client(&options.vod_signer, options.consumer_token.clone())?,
        storage: options.storage.clone(),
        public_url: gateway_url.clone(),
        allowed_origins,
        notify_url: format!("{app_url}/notify"),
        webhook_token,
    }));

    let app_router = crate::app::router(app.clone());
    let gateway_router = crate::gateway::router(gateway.clone());
    let tasks = vec![
        tokio::spawn(async move {
            if let Err(e) = axum::serve(app_listener, app_router).await {
                tracing::error!(error = %e, "app server stopped");
            }
        }),
        tokio::spawn(async move {
            if let Err(e) = axum::serve(gateway_listener, gateway_router).await {
                tracing::error!(error = %e, "upload gateway stopped");
            }
        }),
    ];
    Ok(Flow {
        app_url,
        gateway_url,
        app,
        gateway,
        tasks,
    })
}
