//! Shutdown leaves nothing running: `serve` returns only once every task it spawned has ended
//! (the store watcher, the lifecycle sweep, the notification pusher, the health probe port,
//! TLS reloading, accepting and handshakes), and the audit writer writes what it holds before
//! it ends. Counted with the runtime's own tally of alive tasks.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::pki::Ca;
use common::{RedisServer, connect, free_port, key_ring, redis_store, test_options, wait_health};
use vod_signer::audit::{EventLog, NoEvents, RedisEvents};
use vod_signer::notify::{Delivery, Lifecycle, PushTarget, Secrets};
use vod_signer::proto::IssueSignatureRequest;
use vod_signer::runner::assemble;
use vod_signer::server::{ServerSettings, serve};
use vod_signer::service::Settings;
use vod_signer::shutdown::Shutdown;
use vod_signer::store::{MemoryStore, RedisStore, Store, StoreHealth as _};
use vod_signer::tls::TlsFiles;

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until at most `expected` tasks are alive: a client's connection tasks
/// and the memory store's purge end a moment after what owns them is dropped.
async fn settles_to(expected: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while alive() > expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} tasks alive, expected {expected}",
            alive()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves `store` with `options` until `during` is done, then shuts down and checks that
/// `serve` returned in time; what `during` gave back. The health probe port is always on
/// (another spawned task), and health is awaited on it.
async fn serve_then_stop<S: Store, T, F: Future<Output = T>>(
    store: Arc<S>,
    settings: Settings,
    mut options: ServerSettings,
    events: Arc<dyn EventLog>,
    during: impl FnOnce(SocketAddr) -> F,
) -> T {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probes: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    options.health_listen = Some(probes);
    let signer = assemble(
        store,
        key_ring().shared(),
        settings,
        events,
        options.metrics.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, signer, options, async {
        let _ = stopped.await;
    }));
    wait_health(probes, "", true, Duration::from_secs(10)).await;
    let kept = during(addr).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    kept
}

async fn issue_one(addr: SocketAddr) {
    let mut client = connect(addr).await;
    client
        .issue_signature(IssueSignatureRequest {
            subject: "user-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Pushes to a port nothing listens on: the pusher runs (and retries) until shutdown.
fn pushing_settings() -> Settings {
    let secret = format!("whsec_{}", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    Settings {
        lifecycle: Lifecycle {
            delivery: Delivery::Push(Arc::new(PushTarget {
                url: format!("http://127.0.0.1:{}/hook", free_port())
                    .parse()
                    .unwrap(),
                secrets: Secrets::parse(&secret).unwrap(),
                attempt_timeout: Duration::from_secs(1),
                concurrency: 4,
            })),
            ..Lifecycle::default()
        },
        ..Settings::default()
    }
}

#[tokio::test]
async fn memory_store_serve_returns_with_every_task_ended() {
    let before = alive();
    let store = Arc::new(MemoryStore::new());
    serve_then_stop(
        store.clone(),
        pushing_settings(),
        test_options(),
        Arc::new(NoEvents),
        issue_one,
    )
    .await;
    // The store's own purge ends with the store, which the test still holds.
    settles_to(before + 1, "after serve returned").await;
    drop(store);
    settles_to(before, "after the store was dropped").await;
}

#[tokio::test]
async fn tls_serve_returns_with_accept_and_handshake_tasks_ended() {
    let ca = Ca::new("shutdown test CA");
    let leaf = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, leaf.cert).unwrap();
    std::fs::write(&key, leaf.key).unwrap();
    let options = ServerSettings {
        tls: Some(TlsFiles {
            cert,
            key,
            client_ca: None,
        }),
        ..test_options()
    };
    let before = alive();
    let store = Arc::new(MemoryStore::new());
    let idle = serve_then_stop(
        store.clone(),
        Settings::default(),
        options,
        Arc::new(NoEvents),
        |addr| async move {
            // A client that connects and never says hello: its handshake is in flight at
            // shutdown, and would otherwise hold a task for the handshake timeout.
            let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            idle
        },
    )
    .await;
    settles_to(before + 1, "after serve returned").await;
    drop((store, idle));
    settles_to(before, "after the store was dropped").await;
}

/// A Redis store, connected: its connection tasks are then all running.
async fn connected_redis_store(redis: &RedisServer) -> Arc<RedisStore> {
    let store = Arc::new(redis_store(&redis.url(), "shutdown:"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
}

#[tokio::test]
async fn redis_store_serve_returns_and_the_audit_writer_writes_what_it_held() {
    let redis = RedisServer::start();
    let store = connected_redis_store(&redis).await;
    // The store's connection tasks, which belong to the store, not to the server.
    let with_store = alive();
    let tasks = Shutdown::new();
    let events = Arc::new(RedisEvents::start(
        store.connector().clone(),
        "shutdown:events".into(),
        1000,
        Duration::from_secs(2),
        &tasks,
    ));
    serve_then_stop(
        store.clone(),
        pushing_settings(),
        test_options(),
        events.clone(),
        issue_one,
    )
    .await;
    settles_to(
        with_store + 1,
        "after serve returned (the audit writer still running)",
    )
    .await;
    assert!(tasks.finish(Duration::from_secs(5)).await);
    assert_eq!(
        redis.cli(&["XLEN", "shutdown:events"]).as_deref(),
        Some("1"),
        "the issue's event was written before the writer ended"
    );
    assert_eq!(events.dropped(), 0);
    settles_to(with_store, "after the audit writer ended").await;
}
