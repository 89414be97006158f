//! Redis going away: data lost, server stopped, server not yet started. The service must fail
//! closed (never accept), answer within the store timeout, report it in health, and recover by
//! itself.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vod_signer::proto::{IssueSignatureRequest, VerifySignatureRequest};
use vod_signer::reason::Reason;
use vod_signer::service::Settings;

/// A server on a fresh Redis, with the default 250 ms store timeout.
async fn on_redis() -> TestServer {
    let redis = RedisServer::start();
    let store = Arc::new(redis_store(&redis.url(), "vodsigner:"));
    TestServer::start_on(store, Some(redis), Settings::default()).await
}

#[tokio::test]
async fn data_lost_means_refused_never_accepted() {
    let mut server = on_redis().await;
    let mut client = server.client().await;
    let mut outstanding = Vec::new();
    for _ in 0..5 {
        outstanding.push(
            client
                .issue_signature(IssueSignatureRequest::default())
                .await
                .unwrap()
                .into_inner()
                .signature,
        );
    }
    let used = outstanding.pop().unwrap();
    client.consume_signature(consume_req(&used)).await.unwrap();

    server.redis.as_mut().unwrap().restart_empty();
    server.wait_serving(Duration::from_secs(10)).await;

    // The client reconnects by itself; the first call may still meet the dead connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.consume_signature(consume_req(&outstanding[0])).await {
            Err(s) if reason_of(&s) == Reason::StoreUnavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => {
                assert_eq!(refused(other), Reason::SignatureNotIssued);
                break;
            }
        }
    }
    for sig in outstanding.iter().chain([&used]) {
        assert_eq!(
            refused(client.consume_signature(consume_req(sig)).await),
            Reason::SignatureNotIssued
        );
    }
    // Issuing works again.
    let fresh = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    client.consume_signature(consume_req(&fresh)).await.unwrap();
}

#[tokio::test]
async fn redis_down_fails_closed_fast_and_recovers() {
    let mut server = on_redis().await;
    let mut client = server.client().await;
    let sig = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    let verify = VerifySignatureRequest {
        signature: sig.clone(),
    };

    let mut redis = server.redis.take().unwrap();
    redis.stop();
    wait_health(server.addr, "", false, Duration::from_secs(5)).await;
    wait_health(
        server.addr,
        "vodsigner.v1.SignatureService",
        false,
        Duration::from_secs(5),
    )
    .await;

    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            refused(client.consume_signature(consume_req(&sig)).await),
            Reason::StoreUnavailable
        );
        assert_eq!(
            refused(
                client
                    .issue_signature(IssueSignatureRequest::default())
                    .await
            ),
            Reason::StoreUnavailable
        );
        assert_eq!(
            refused(client.verify_signature(verify.clone()).await),
            Reason::StoreUnavailable
        );
        // Three calls, each bounded by the 250 ms store timeout (plus slack for a loaded machine).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    // Same port, empty: health comes back by itself, and the signature (whose record is gone)
    // is refused, never accepted.
    redis.restart_empty();
    server.redis = Some(redis);
    server.wait_serving(Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        match client
            .issue_signature(IssueSignatureRequest::default())
            .await
        {
            Ok(r) => break r.into_inner().signature,
            Err(s) => {
                assert_eq!(reason_of(&s), Reason::StoreUnavailable);
                assert!(Instant::now() < deadline, "issue did not recover");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    client.consume_signature(consume_req(&fresh)).await.unwrap();
    assert_eq!(
        refused(client.consume_signature(consume_req(&sig)).await),
        Reason::SignatureNotIssued
    );
}

#[tokio::test]
async fn starts_before_redis_and_serves_once_it_is_up() {
    let port = free_port();
    let store = Arc::new(redis_store(
        &format!("redis://127.0.0.1:{port}/0"),
        "vodsigner:",
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    let options = test_options();
    let signer = vod_signer::runner::assemble(
        store,
        key_ring().shared(),
        Settings::default(),
        Arc::new(vod_signer::audit::NoEvents),
        options.metrics.clone(),
    );
    tokio::spawn(vod_signer::server::serve(
        listener,
        signer,
        options,
        async {
            let _ = rx.await;
        },
    ));
    wait_health(addr, "", false, Duration::from_secs(5)).await;
    let mut client = connect(addr).await;
    assert_eq!(
        refused(
            client
                .issue_signature(IssueSignatureRequest::default())
                .await
        ),
        Reason::StoreUnavailable
    );

    let redis = RedisServer::start_on(port);
    wait_health(addr, "", true, Duration::from_secs(10)).await;
    let sig = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    client.consume_signature(consume_req(&sig)).await.unwrap();
    drop(redis);
}

#[tokio::test]
async fn custom_key_prefix() {
    let redis = RedisServer::start();
    let store = Arc::new(redis_store(&redis.url(), "tenant-a:"));
    let server = TestServer::start_on(store, Some(redis), Settings::default()).await;
    let reply = server
        .client()
        .await
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner();
    let random = reply.claims.unwrap().random;
    let keys = server.redis.as_ref().unwrap().cli(&["KEYS", "*"]).unwrap();
    assert_eq!(keys, format!("tenant-a:sig:{SECRET_ID}:{random}"));
}

/// The harness itself: a port taken by another Redis (a lost race after `free_port`) is never
/// mistaken for the test's own server. On a port the test chose, the start fails loudly; on
/// a picked port, another one is picked and the server answering is the test's own.
#[test]
fn a_taken_port_is_never_mistaken_for_our_own_redis() {
    use std::sync::atomic::{AtomicU16, Ordering};
    static TAKEN: AtomicU16 = AtomicU16::new(0);
    let other = RedisServer::start();
    other.cli(&["SET", "owner", "the other test"]).unwrap();

    let fixed = std::panic::catch_unwind(|| RedisServer::start_on(other.port));
    assert!(fixed.is_err(), "started on a port another Redis holds");

    TAKEN.store(other.port, Ordering::SeqCst);
    // The first pick loses the race (the other Redis has it); the next ones are free.
    let pick = || match TAKEN.swap(0, Ordering::SeqCst) {
        0 => free_port(),
        taken => taken,
    };
    let ours = RedisServer::start_configured_picking(pick, &[], &[]);
    assert_ne!(ours.port, other.port);
    assert_eq!(ours.cli(&["EXISTS", "owner"]).as_deref(), Some("0"));
    assert_eq!(
        other.cli(&["GET", "owner"]).as_deref(),
        Some("the other test")
    );
}
