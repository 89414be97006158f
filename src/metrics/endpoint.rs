//! The `/metrics` HTTP endpoint: a plain listener of its own, apart from gRPC, so a scrape
//! needs neither HTTP/2 nor the service's TLS and caller policy.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::Metrics;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    let local: Option<SocketAddr> = listener.local_addr().ok();
    if let Some(addr) = local {
        tracing::info!(addr = %addr, "serving metrics");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
