//! Building the redis crate's clients from the configuration, and dialling a node.
//!
//! Credentials and TLS material come from the configuration (files, environment), never
//! only from the URL; every socket gets the same TCP settings, so a dead peer is noticed by
//! the kernel too, not only by the connector's own timeouts.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::io::tcp::TcpSettings;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::RedisSettings;
use super::error::Error;

/// TCP settings of every socket to a Redis node: `TCP_NODELAY` (commands are small writes
/// that must not wait for an ACK), keepalive probes that find a dead idle peer, and
/// `TCP_USER_TIMEOUT` so the kernel itself fails a connection whose sent data stays
/// unacknowledged (the default retransmission gives up only after ~15 minutes). These are a
/// backstop: the connector redials on the store's own timeouts long before.
pub(super) fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(Duration::from_secs(5));
    settings
}

/// Patience for work off the request path (dialling, asking sentinels): it matters most when
/// the service is busiest (a failover under load), so it gets more than a call does.
pub(super) fn background_timeout(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(1))
}

/// Dials one node: a multiplexed connection whose calls are bounded by the store timeout.
pub(super) async fn dial(
    client: &Client,
    timeout: Duration,
) -> Result<MultiplexedConnection, Error> {
    let patience = background_timeout(timeout);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(patience))
        .set_response_timeout(Some(timeout));
    match tokio::time::timeout(
        patience,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::Redis(e)),
        Err(_) => Err(Error::Timeout {
            what: "no connection",
            after: patience,
        }),
    }
}

/// The configuration's TLS material; `None` when it gives none (the system's trust store).
pub(super) fn tls_certs(config: &RedisSettings) -> Option<redis::TlsCertificates> {
    if config.tls_ca.is_none() && config.tls_client.is_none() {
        return None;
    }
    Some(redis::TlsCertificates {
        client_tls: config
            .tls_client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: config.tls_ca.clone(),
    })
}

/// A client for one node, credentials and TLS material from the configuration.
pub(super) fn node_client(info: ConnectionInfo, config: &RedisSettings) -> Result<Client, Error> {
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    let info = info
        .set_redis_settings(settings)
        .set_tcp_settings(tcp_settings());
    match tls_certs(config) {
        None => Client::open(info).map_err(|source| Error::Settings {
            what: "Redis",
            source,
        }),
        Some(certs) => Client::build_with_tls(info, certs).map_err(|source| Error::Settings {
            what: "Redis TLS",
            source,
        }),
    }
}

/// A client for one server from its URL.
pub(super) fn single_client(url: &str, config: &RedisSettings) -> Result<Client, Error> {
    let info = url
        .into_connection_info()
        .map_err(|e| Error::BadUrl(e.to_string().replace(url, "<url>")))?;
    node_client(info, config)
}

/// A client for the cluster whose seed nodes are `nodes`: calls bounded by the store
/// timeout, a couple of retries for MOVED/ASK and topology changes.
pub(super) fn cluster_client(
    nodes: Vec<String>,
    config: &RedisSettings,
) -> Result<ClusterClient, Error> {
    let mut builder = ClusterClientBuilder::new(nodes)
        .connection_timeout(config.timeout)
        .response_timeout(config.timeout)
        .tcp_settings(tcp_settings())
        .retries(2);
    if let Some(user) = &config.username {
        builder = builder.username(user);
    }
    if let Some(password) = &config.password {
        builder = builder.password(password);
    }
    if let Some(certs) = tls_certs(config) {
        builder = builder.certs(certs);
    }
    builder.build().map_err(|source| Error::Settings {
        what: "Redis Cluster",
        source,
    })
}

/// The address of a node at `host:port`, over TLS or not.
pub(super) fn tcp_addr(host: String, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    }
}
