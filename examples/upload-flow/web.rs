//! What the app server and the upload gateway share: JSON answers, random ids and the
//! notification secret, and [`bind`] then [`start`], which run both servers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;
use vod_signer::client::{Client, ClientConfig, ClientError};
use vod_signer::notify::Secrets;

use crate::app::{AppConfig, AppState};
use crate::gateway::{GatewayConfig, GatewayState};

/// The demo account (the only one).
pub const DEMO_USER: &str = "demo";
/// The demo account's password.
pub const DEMO_PASSWORD: &str = "demo";

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

/// A fresh Standard Webhooks secret (`whsec_` and base64 of 32 random bytes), as vod-signer's
/// `--notify-secret-file` takes it: the app server checks vod-signer's pushes with it.
pub fn new_webhook_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
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
    /// The secrets vod-signer signs its pushes with (the text of its `--notify-secret-file`);
    /// None: the app server refuses every push, having no way to check it.
    pub webhook_secrets: Option<String>,
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

/// Both listeners, bound: their URLs are known (vod-signer's `--notify-url` needs the app
/// server's) before anything is served.
pub struct Bound {
    app: tokio::net::TcpListener,
    gateway: tokio::net::TcpListener,
    /// `http://host:port` of the app server.
    pub app_url: String,
    /// `http://host:port` of the gateway.
    pub gateway_url: String,
}

impl Bound {
    /// Where the app server takes vod-signer's pushes.
    pub fn notify_url(&self) -> String {
        format!("{}/notify", self.app_url)
    }
}

/// Binds the app server's and the gateway's listeners (port 0: any free port).
pub async fn bind(app_listen: SocketAddr, gateway_listen: SocketAddr) -> Result<Bound, String> {
    let app = tokio::net::TcpListener::bind(app_listen)
        .await
        .map_err(|e| format!("app server on {app_listen}: {e}"))?;
    let gateway = tokio::net::TcpListener::bind(gateway_listen)
        .await
        .map_err(|e| format!("upload gateway on {gateway_listen}: {e}"))?;
    let app_url = url_of(app.local_addr().map_err(|e| e.to_string())?);
    let gateway_url = url_of(gateway.local_addr().map_err(|e| e.to_string())?);
    Ok(Bound {
        app,
        gateway,
        app_url,
        gateway_url,
    })
}

/// Serves the app server and the gateway on `bound`, in the background.
pub async fn start(bound: Bound, options: FlowOptions) -> Result<Flow, String> {
    let Bound {
        app: app_listener,
        gateway: gateway_listener,
        app_url,
        gateway_url,
    } = bound;
    let app_addr = app_listener.local_addr().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&options.storage)
        .map_err(|e| format!("storage {}: {e}", options.storage.display()))?;
    let webhook_secrets = match &options.webhook_secrets {
        Some(text) => {
            Some(Secrets::parse(text).map_err(|e| format!("the notification secrets: {e}"))?)
        }
        None => None,
    };

    let mut allowed_origins = vec![app_url.clone()];
    if app_addr.ip().is_loopback() || app_addr.ip().is_unspecified() {
        allowed_origins.push(format!("http://localhost:{}", app_addr.port()));
    }

    let app = Arc::new(AppState::new(AppConfig {
        client: client(&options.vod_signer, options.issuer_token.clone())?,
        upload_url: format!("{gateway_url}/upload"),
        max_file_size: options.max_file_size,
        ttl_seconds: options.ttl_seconds,
        webhook_secrets,
    }));
    let gateway = Arc::new(GatewayState::new(GatewayConfig {
        client: client(&options.vod_signer, options.consumer_token.clone())?,
        storage: options.storage.clone(),
        public_url: gateway_url.clone(),
        allowed_origins,
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
