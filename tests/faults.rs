//! Faults between the service and Redis, injected with a TCP proxy in front of a real
//! `redis-server`: lost replies, a black hole, slowness, cuts during a burst, a restart with
//! the data kept; plus the service's own bounds (load shedding, deadlines, drain).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultProxy};
use common::*;
use tonic::Code;
use vod_signer::proto::{
    IssueSignatureRequest, RevokeSignatureRequest, SignatureState, VerifySignatureRequest,
};
use vod_signer::reason::Reason;
use vod_signer::server::ServerSettings;
use vod_signer::service::Settings;

/// A Redis, a proxy in front of it, and a server that reaches Redis through the proxy.
async fn behind_proxy(settings: Settings) -> (TestServer, FaultProxy) {
    behind_proxy_with(settings, test_options()).await
}

/// [`behind_proxy`] with server `options`.
async fn behind_proxy_with(
    settings: Settings,
    options: ServerSettings,
) -> (TestServer, FaultProxy) {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port).await;
    let store = Arc::new(redis_store(&proxy.url(), "vodsigner:"));
    (
        TestServer::start_configured(store, Some(redis), settings, options).await,
        proxy,
    )
}

async fn issue(
    client: &mut vod_signer::proto::signature_service_client::SignatureServiceClient<
        tonic::transport::Channel,
    >,
) -> String {
    client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature
}

#[tokio::test]
async fn reply_lost_after_the_write_then_idempotent_retry() {
    let (server, proxy) = behind_proxy(Settings::default()).await;
    let mut client = server.client().await;
    // Load the consume script first: on a fresh Redis the first EVALSHA is answered NOSCRIPT,
    // and losing that reply would lose nothing.
    let warm = issue(&mut client).await;
    client
        .consume_signature(consume_with(&warm, ""))
        .await
        .unwrap();

    let sig = issue(&mut client).await;
    proxy.set(Fault::LoseReplies);
    let lost = client
        .consume_signature(consume_with(&sig, "attempt-1"))
        .await;
    assert_eq!(
        refused(lost),
        Reason::StoreUnavailable,
        "the caller cannot know the outcome"
    );
    proxy.set(Fault::Pass);

    // It did reach Redis: the record says consumed.
    let parsed = vod_signer::signature::parse(&sig).unwrap();
    let key = format!("vodsigner:sig:{SECRET_ID}:{}", parsed.claims.random);
    let record = server.redis.as_ref().unwrap().cli(&["GET", &key]).unwrap();
    assert!(record.starts_with("v1|consumed|"), "{record}");

    // The retry with the same key gets the success; its consumed_at is the first one's.
    let at = consume_retrying(&mut client, &sig, "attempt-1", Duration::from_secs(10))
        .await
        .unwrap();
    let again = consume_retrying(&mut client, &sig, "attempt-1", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(at, again);
    let changed_at: i64 = record.split('|').nth(4).unwrap().parse().unwrap();
    assert_eq!(at, changed_at);
    // Anyone else is refused.
    assert_eq!(
        consume_retrying(&mut client, &sig, "attempt-2", Duration::from_secs(10)).await,
        Err(Reason::SignatureAlreadyUsed)
    );
    assert_eq!(
        consume_retrying(&mut client, &sig, "", Duration::from_secs(10)).await,
        Err(Reason::SignatureAlreadyUsed)
    );
}

#[tokio::test]
async fn black_holed_redis_answers_within_the_timeout_and_accepts_nothing() {
    let (server, proxy) = behind_proxy(Settings::default()).await;
    let mut client = server.client().await;
    let sigs = [issue(&mut client).await, issue(&mut client).await];

    proxy.set(Fault::Stall);
    let started = Instant::now();
    for (i, sig) in sigs.iter().enumerate() {
        let r = client
            .consume_signature(consume_with(sig, &format!("k{i}")))
            .await;
        assert_eq!(refused(r), Reason::StoreUnavailable);
    }
    assert_eq!(
        refused(
            client
                .issue_signature(IssueSignatureRequest::default())
                .await
        ),
        Reason::StoreUnavailable
    );
    let verify = VerifySignatureRequest {
        signature: sigs[0].clone(),
    };
    assert_eq!(
        refused(client.verify_signature(verify).await),
        Reason::StoreUnavailable
    );
    // Four calls bounded by the 250 ms store timeout each; generous slack for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    wait_health(server.addr, "", false, Duration::from_secs(5)).await;

    proxy.set(Fault::Pass);
    server.wait_serving(Duration::from_secs(10)).await;
    // Whether the held consumes ran late or never, each signature is used at most once, and the
    // caller that kept its idempotency key gets its success.
    for (i, sig) in sigs.iter().enumerate() {
        consume_retrying(&mut client, sig, &format!("k{i}"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            consume_retrying(&mut client, sig, "other", Duration::from_secs(10)).await,
            Err(Reason::SignatureAlreadyUsed)
        );
    }
}

/// The open connection goes dark (a dead peer: silence, no reset) while new connections would
/// pass. TCP alone would notice after ~15 minutes; the store notices from its own timeouts
/// (calls, or the health PING), drops the connection and dials a new one.
#[tokio::test]
async fn a_connection_that_goes_dark_is_replaced_within_5_s() {
    let (server, proxy) = behind_proxy(Settings::default()).await;
    let mut client = server.client().await;
    let sigs = [issue(&mut client).await, issue(&mut client).await];
    assert!(
        proxy.darken_open_connections() >= 1,
        "a connection was open"
    );
    let dark = Instant::now();
    // The first call after it went dark is refused within the store timeout, never hangs.
    let first = client.consume_signature(consume_with(&sigs[0], "k0")).await;
    assert_eq!(refused(first), Reason::StoreUnavailable);
    // The promise: consuming and SERVING again within 5 s.
    let promise = Duration::from_secs(5);
    consume_retrying(&mut client, &sigs[0], "k0", promise)
        .await
        .unwrap();
    wait_health(
        server.addr,
        "",
        true,
        promise.saturating_sub(dark.elapsed()),
    )
    .await;
    let healed = dark.elapsed();
    println!("dark connection replaced: consuming and SERVING again after {healed:?}");
    assert!(healed < promise, "took {healed:?}");
    // Only the dark connection's calls were lost; nothing was accepted twice.
    consume_retrying(&mut client, &sigs[1], "k1", promise)
        .await
        .unwrap();
    assert_eq!(
        refused(
            client
                .consume_signature(consume_with(&sigs[0], "other"))
                .await
        ),
        Reason::SignatureAlreadyUsed
    );
}

#[tokio::test]
async fn slow_redis_within_and_beyond_the_timeout() {
    let (server, proxy) = behind_proxy(Settings::default()).await;
    let mut client = server.client().await;
    // Load the script first, so the slow consume below is one round trip.
    let warm = issue(&mut client).await;
    client
        .consume_signature(consume_with(&warm, ""))
        .await
        .unwrap();
    proxy.set(Fault::Delay(Duration::from_millis(40)));
    let sig = issue(&mut client).await;
    client
        .consume_signature(consume_with(&sig, ""))
        .await
        .unwrap();

    proxy.set(Fault::Delay(Duration::from_millis(600)));
    let started = Instant::now();
    assert_eq!(
        refused(
            client
                .issue_signature(IssueSignatureRequest::default())
                .await
        ),
        Reason::StoreUnavailable
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_with_its_data() {
    let redis = RedisServer::start_persistent();
    let store = Arc::new(redis_store(&redis.url(), "vodsigner:"));
    let mut server = TestServer::start_on(store, Some(redis), Settings::default()).await;
    let mut client = server.client().await;
    let [used, revoked, unused, unseen] = [
        issue(&mut client).await,
        issue(&mut client).await,
        issue(&mut client).await,
        issue(&mut client).await,
    ];
    client
        .consume_signature(consume_with(&used, ""))
        .await
        .unwrap();
    client
        .revoke_signature(RevokeSignatureRequest {
            signature: revoked.clone(),
        })
        .await
        .unwrap();

    server.redis.as_mut().unwrap().kill_and_restart();
    server.wait_serving(Duration::from_secs(10)).await;

    let wait = Duration::from_secs(10);
    assert_eq!(
        consume_retrying(&mut client, &used, "", wait).await,
        Err(Reason::SignatureAlreadyUsed)
    );
    assert_eq!(
        consume_retrying(&mut client, &revoked, "", wait).await,
        Err(Reason::SignatureRevoked)
    );
    consume_retrying(&mut client, &unused, "", wait)
        .await
        .unwrap();
    assert_eq!(
        consume_retrying(&mut client, &unused, "", wait).await,
        Err(Reason::SignatureAlreadyUsed)
    );
    let state = client
        .verify_signature(VerifySignatureRequest { signature: unseen })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, SignatureState::Issued as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_during_a_burst_lose_no_consume_and_double_none() {
    const CALLS: usize = 200;
    let (server, proxy) = behind_proxy(Settings::default()).await;
    let mut client = server.client().await;
    let mut sigs = Vec::new();
    for _ in 0..CALLS {
        sigs.push(issue(&mut client).await);
    }
    // Owners done so far: the cuts are paced by the burst's progress, not by a timer.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let mut tasks = Vec::new();
    for (i, sig) in sigs.iter().enumerate() {
        let mut client = client.clone();
        let sig = sig.clone();
        let done_tx = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let owner = consume_retrying(
                &mut client,
                &sig,
                &format!("owner-{i}"),
                Duration::from_secs(20),
            )
            .await;
            let end = Instant::now();
            done_tx.send_modify(|n| *n += 1);
            // A replay racing the owner, with its own key.
            let replay = consume_retrying(
                &mut client,
                &sig,
                &format!("replay-{i}"),
                Duration::from_secs(20),
            )
            .await;
            (owner, replay, start..end)
        }));
    }
    let mut cuts = Vec::new();
    for threshold in [10, 40, 70, 100, 130, 160] {
        tokio::time::timeout(
            Duration::from_secs(20),
            done_rx.wait_for(|n| *n >= threshold),
        )
        .await
        .expect("the burst progresses")
        .unwrap();
        cuts.push(Instant::now());
        proxy.cut_all();
    }
    let mut consumed_at = HashMap::new();
    let mut calls = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let (owner, replay, call) = task.await.unwrap();
        let at = owner.unwrap_or_else(|r| panic!("signature {i}: owner refused with {r}"));
        assert_eq!(
            replay,
            Err(Reason::SignatureAlreadyUsed),
            "signature {i} accepted twice"
        );
        consumed_at.insert(i, at);
        calls.push(call);
    }
    assert_eq!(consumed_at.len(), CALLS);
    // Every cut hit owners' consumes in flight (started before it, finished after it).
    for (n, cut) in cuts.iter().enumerate() {
        let in_flight = calls.iter().filter(|c| c.contains(cut)).count();
        assert!(
            in_flight > 0,
            "cut {n} happened while no owner's consume was in flight"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_a_typed_refusal() {
    let (server, proxy) = behind_proxy_with(
        Settings::default(),
        ServerSettings {
            max_concurrent_calls: 4,
            max_queued_calls: 0,
            ..test_options()
        },
    )
    .await;
    let mut client = server.client().await;
    let sig = issue(&mut client).await;
    proxy.set(Fault::Delay(Duration::from_millis(150)));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mut client = client.clone();
        let sig = sig.clone();
        tasks.push(tokio::spawn(async move {
            client
                .verify_signature(VerifySignatureRequest { signature: sig })
                .await
                .map(|_| ())
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(status) => {
                assert_eq!(reason_of(&status), Reason::RateLimited);
                assert_eq!(status.code(), Code::ResourceExhausted);
                shed += 1;
            }
        }
    }
    assert!(ok >= 4 && shed > 0, "ok {ok}, shed {shed}");
    proxy.set(Fault::Pass);
    client
        .consume_signature(consume_with(&sig, ""))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_callers_deadline_is_respected() {
    let (server, proxy) = behind_proxy(Settings::default()).await;
    let mut client = server.client().await;
    let sig = issue(&mut client).await;
    // Redis answers after 1 s, past the 250 ms store timeout: a server that ignored the
    // 50 ms deadline would answer STORE_UNAVAILABLE at 250 ms instead of ending the call.
    proxy.set(Fault::Delay(Duration::from_millis(1000)));
    let mut request = tonic::Request::new(VerifySignatureRequest { signature: sig });
    request.set_timeout(Duration::from_millis(50));
    let status = client.verify_signature(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
}

/// The in-process server drains: with a consume held in flight by a stalled Redis, the
/// shutdown stops accepting connections at once, waits for the call, and it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_calls_in_flight() {
    // A store timeout well above the time the test holds Redis back.
    const STORE_TIMEOUT: Duration = Duration::from_secs(10);
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port).await;
    let store = Arc::new(redis_store_within(
        &proxy.url(),
        "vodsigner:",
        STORE_TIMEOUT,
    ));
    let options = test_options();
    let drain = options.drain_timeout;
    let server =
        TestServer::start_configured(store, Some(redis), Settings::default(), options).await;
    let mut client = server.client().await;
    // Load the script, so the consume below is one round trip.
    let warm = issue(&mut client).await;
    client
        .consume_signature(consume_with(&warm, ""))
        .await
        .unwrap();
    let sig = issue(&mut client).await;
    proxy.set(Fault::Stall);
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move { client.consume_signature(consume_with(&sig, "")).await })
    };
    let deadline = Instant::now() + STORE_TIMEOUT / 2;
    loop {
        let exposition = Exposition::parse(server.metrics.encode());
        if exposition.value("vodsigner_inflight_requests", &[]) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the consume never got in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = server.addr;
    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    let deadline = Instant::now() + STORE_TIMEOUT / 2;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting while draining");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!in_flight.is_finished() && !shutdown.is_finished());
    proxy.set(Fault::Pass);
    tokio::time::timeout(drain, shutdown)
        .await
        .expect("drained within the drain timeout")
        .unwrap();
    assert!(started.elapsed() < drain);
    in_flight
        .await
        .unwrap()
        .expect("the call in flight finished with success");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
