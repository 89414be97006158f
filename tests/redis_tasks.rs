//! Background tasks end with their owner: a Redis store that is dropped leaves no keeper,
//! memory watch, `WAIT` group commit or connection driver running, on each of the three
//! deployments. Counted with the runtime's own task count, waited for within a bound derived
//! from the watch's poll period and the store timeout, never a guessed sleep.

mod common;

use std::time::{Duration, Instant};

use common::topology::{RedisCluster, SentinelGroup};
use common::*;
use vod_signer::redis::memory::MEMORY_POLL;
use vod_signer::store::RedisStore;
use vod_signer::store::StoreHealth as _;

/// The store timeout of these tests.
const TIMEOUT: Duration = Duration::from_millis(250);

/// How long the last task may take to notice its owner is gone: the memory watch looks once
/// per [`MEMORY_POLL`], and work in flight off the request path (a dial, an `INFO`, a
/// sentinel's answer) is bounded by 4 store timeouts (at least a second).
fn ending_bound() -> Duration {
    MEMORY_POLL + (TIMEOUT * 4).max(Duration::from_secs(1))
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Starts a store on `url`, waits until it works (connected, `INFO` read), drops it, and
/// checks that every task it started ended within [`ending_bound`].
async fn a_dropped_store_leaves_no_task(url: String) {
    let before = alive_tasks();
    let store = RedisStore::new(&vod_signer::redis::RedisSettings {
        url,
        key_prefix: "tasks:".into(),
        timeout: TIMEOUT,
        ..Default::default()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.ping().await.is_err() || store.memory().is_none_or(|m| !m.read) {
        assert!(Instant::now() < deadline, "the store did not get ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = alive_tasks();
    // At least the keeper, the memory watch and the group commit of the connection.
    assert!(
        running >= before + 3,
        "the store runs {} tasks",
        running - before
    );

    drop(store);
    let dropped = Instant::now();
    while alive_tasks() > before {
        assert!(
            dropped.elapsed() < ending_bound(),
            "{} of the store's {} tasks still run {:?} after it was dropped",
            alive_tasks() - before,
            running - before,
            ending_bound()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_tasks_end_with_the_store() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    a_dropped_store_leaves_no_task(redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tasks_end_with_the_store() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, false))
        .await
        .unwrap();
    a_dropped_store_leaves_no_task(cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_tasks_end_with_the_store() {
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap();
    a_dropped_store_leaves_no_task(group.url()).await;
}
