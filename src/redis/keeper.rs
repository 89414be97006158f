//! The keeper tasks of a single server and of a Cluster: dial in the background until Redis
//! answers, then dial again whenever the connector is told the connection stopped answering.
//!
//! The service starts while Redis may still be coming up, so the first dial never blocks it;
//! Sentinel has its own keeper, which must also ask where the master is.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use redis::Client;
use redis::cluster::ClusterClient;
use tracing::{info, warn};

use super::RedisSettings;
use super::connection::{Link, wait_bound};
use super::connector::Shared;
use super::dial::{cluster_client, dial, single_client};
use super::error::Error;

/// Starts the keeper of one server at `url`.
pub(super) fn start_single(
    url: &str,
    config: &RedisSettings,
    shared: Arc<Shared>,
) -> Result<(), Error> {
    let client = single_client(url, config)?;
    let keeper = keep_single(client, shared.clone(), config.timeout);
    shared.spawn_while_owned(keeper);
    Ok(())
}

/// Starts the keeper of the cluster whose seed nodes are `nodes`.
pub(super) fn start_cluster(
    nodes: Vec<String>,
    config: &RedisSettings,
    shared: Arc<Shared>,
) -> Result<(), Error> {
    let client = cluster_client(nodes, config)?;
    let keeper = keep_cluster(client, shared.clone(), config.timeout);
    shared.spawn_while_owned(keeper);
    Ok(())
}

/// One server: dials (retrying until Redis answers), then dials again when the connection
/// breaks or keeps timing out: a timeout is not an error to the redis crate, so a connection
/// to a peer that went silent would otherwise be kept for as long as TCP retransmits.
async fn keep_single(client: Client, shared: Arc<Shared>, timeout: Duration) {
    let names = KeeperLogs {
        connected: "connected to Redis",
        replaced: "the Redis connection broke or stopped answering: dialled a new one",
        unreachable: "Redis",
    };
    keep_dialling(shared, timeout, names, || async {
        dial(&client, timeout).await.map(Link::Node)
    })
    .await
}

/// Connects to the cluster (retrying until it answers), then builds a fresh connection when
/// told calls keep failing. After a resharding under load the redis crate's cluster
/// connection was seen timing out every call for 20 s and more; a new one reads the slot map
/// afresh and works at once.
async fn keep_cluster(client: ClusterClient, shared: Arc<Shared>, timeout: Duration) {
    let names = KeeperLogs {
        connected: "connected to Redis Cluster",
        replaced: "reconnected to Redis Cluster after failing calls",
        unreachable: "Redis Cluster",
    };
    keep_dialling(shared, timeout, names, || async {
        client.get_async_connection().await.map(Link::Cluster)
    })
    .await
}

/// What a keeper logs when it connects, replaces a connection, or cannot reach Redis.
struct KeeperLogs {
    connected: &'static str,
    replaced: &'static str,
    unreachable: &'static str,
}

/// Dials with `dial` (retrying with backoff until it succeeds), installs the connection, and
/// dials again each time a redial is requested.
async fn keep_dialling<F, E>(
    shared: Arc<Shared>,
    timeout: Duration,
    logs: KeeperLogs,
    mut dial: impl FnMut() -> F,
) where
    F: Future<Output = Result<Link, E>>,
    E: std::fmt::Display,
{
    let mut retries = redial_backoff();
    loop {
        match dial().await {
            Ok(link) => {
                if shared.connected() {
                    warn!("{}", logs.replaced);
                } else {
                    info!("{}", logs.connected);
                }
                shared.install(link, Arc::default(), wait_bound(timeout));
                retries = redial_backoff();
                shared.redial_requested().await;
            }
            Err(e) => {
                warn!("{} not reachable ({e}); retrying", logs.unreachable);
                tokio::time::sleep(retries.next().unwrap_or(MAX_BACKOFF)).await;
            }
        }
    }
}

/// The longest pause between two dials of a Redis that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Pauses between dials of a Redis that does not answer: exponential from 100 ms to
/// [`MAX_BACKOFF`], with jitter so a fleet of replicas does not dial in lockstep.
fn redial_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}
