//! `vod-signer serve` as real processes: replicas sharing one Redis, SIGTERM, `--dev`,
//! environment variables, reflection, start-up errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use common::*;
use vod_signer::proto::{IssueSignatureRequest, SignatureState, VerifySignatureRequest};
use vod_signer::reason::Reason;

#[tokio::test]
async fn two_replicas_share_one_redis() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    // What the replicas answer is under test, not how fast: the semantic suites' store
    // timeout, so a busy machine does not turn a refusal into STORE_UNAVAILABLE.
    let timeout_ms = SEMANTIC_STORE_TIMEOUT.as_millis().to_string();
    let args = [
        "--redis-url",
        &redis.url(),
        "--store-timeout-ms",
        &timeout_ms,
    ];
    let a = ServerProcess::start(keys.path(), &args);
    let b = ServerProcess::start(keys.path(), &args);
    let (mut ca, mut cb) = (connect(a.addr).await, connect(b.addr).await);

    // Issued on A, consumed on B, refused on A.
    let sig = ca
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    cb.consume_signature(consume_req(&sig)).await.unwrap();
    assert_eq!(
        refused(ca.consume_signature(consume_req(&sig)).await),
        Reason::SignatureAlreadyUsed
    );
    let state = ca
        .verify_signature(VerifySignatureRequest { signature: sig })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, SignatureState::Consumed as i32);

    // Revoked on B, refused on A.
    let sig = cb
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    cb.revoke_signature(vod_signer::proto::RevokeSignatureRequest {
        signature: sig.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        refused(ca.consume_signature(consume_req(&sig)).await),
        Reason::SignatureRevoked
    );

    // 32 consumers on each replica race on one signature: exactly one wins.
    for _round in 0..3 {
        let sig = ca
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap()
            .into_inner()
            .signature;
        let mut tasks = Vec::new();
        for i in 0..64 {
            let mut client = connect(if i % 2 == 0 { a.addr } else { b.addr }).await;
            let sig = sig.clone();
            tasks.push(tokio::spawn(async move {
                client.consume_signature(consume_req(&sig)).await
            }));
        }
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => wins += 1,
                Err(status) => assert_eq!(reason_of(&status), Reason::SignatureAlreadyUsed),
            }
        }
        assert_eq!(wins, 1);
    }

    // A restarted replica still refuses what was used before its restart.
    drop(a);
    let a = ServerProcess::start(keys.path(), &["--redis-url", &redis.url()]);
    let mut ca = connect(a.addr).await;
    let sig = cb
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    cb.consume_signature(consume_req(&sig)).await.unwrap();
    assert_eq!(
        refused(ca.consume_signature(consume_req(&sig)).await),
        Reason::SignatureAlreadyUsed
    );
}

/// SIGTERM with a call in flight (held by a stalled Redis): the health probe port reports
/// NOT_SERVING while the call is still running, new connections are refused, the call in
/// flight finishes with success, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_off_drains_and_exits_zero() {
    use common::proxy::{Fault, FaultProxy};
    const STORE_TIMEOUT: Duration = Duration::from_secs(10);
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port).await;
    let keys = keys_dir();
    let timeout_ms = STORE_TIMEOUT.as_millis().to_string();
    let mut server = ServerProcess::start(
        keys.path(),
        &[
            "--redis-url",
            &proxy.url(),
            "--store-timeout-ms",
            &timeout_ms,
            "--health-listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "20",
        ],
    );
    let probes = server.logged_addr("serving plaintext health probes");
    let metrics = server.metrics_addr();
    wait_health(server.addr, "", true, STORE_TIMEOUT).await;
    let mut client = connect(server.addr).await;
    // Load the consume script, so the consume below is one round trip.
    let issue =
        async |client: &mut vod_signer::proto::signature_service_client::SignatureServiceClient<
            tonic::transport::Channel,
        >| {
            client
                .issue_signature(IssueSignatureRequest::default())
                .await
                .unwrap()
                .into_inner()
                .signature
        };
    let warm = issue(&mut client).await;
    client.consume_signature(consume_req(&warm)).await.unwrap();
    let sig = issue(&mut client).await;

    // Redis stops answering (within the store timeout): the consume stays in flight.
    proxy.set(Fault::Stall);
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move { client.consume_signature(consume_req(&sig)).await })
    };
    let deadline = std::time::Instant::now() + STORE_TIMEOUT / 2;
    while scrape(metrics)
        .await
        .value("vodsigner_inflight_requests", &[])
        != Some(1.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the consume never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    server.terminate();
    // Probes see NOT_SERVING, overall and for the service, while the call is still running.
    wait_health(probes, "", false, STORE_TIMEOUT / 2).await;
    assert_eq!(
        health(probes, "vodsigner.v1.SignatureService").await,
        Some(tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
    );
    // No new connections: the listener is closed as the drain starts.
    let deadline = std::time::Instant::now() + STORE_TIMEOUT / 2;
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting connections while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the call was still in flight during all of the above"
    );

    // Redis answers again: the call in flight finishes, then the process exits 0.
    proxy.set(Fault::Pass);
    let consumed = tokio::time::timeout(STORE_TIMEOUT, in_flight)
        .await
        .expect("the call in flight finished")
        .unwrap();
    consumed.expect("the call in flight finished with success");
    assert_eq!(server.exited(Duration::from_secs(25)).await, Some(0));
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("drained: exiting"), "{log}");
}

#[tokio::test]
async fn dev_mode_prints_a_working_key_once() {
    let mut cmd = serve_command();
    cmd.arg("--dev");
    let mut server = ServerProcess::spawn(cmd);
    let stdout = BufReader::new(server.child.stdout.take().unwrap());
    let mut secret_id = String::new();
    let mut secret_key = String::new();
    for line in stdout.lines().take(3) {
        let line = line.unwrap();
        if let Some(v) = line.trim().strip_prefix("secretId:") {
            secret_id = v.trim().to_owned();
        }
        if let Some(v) = line.trim().strip_prefix("secretKey:") {
            secret_key = v.trim().to_owned();
        }
    }
    assert!(
        !secret_id.is_empty() && secret_key.len() == 32,
        "{secret_id} {secret_key}"
    );
    let mut client = connect(server.addr).await;
    let reply = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner();
    let parsed = vod_signer::signature::parse(&reply.signature).unwrap();
    assert_eq!(parsed.claims.secret_id, secret_id);
    parsed
        .verify(&vod_signer::signature::SecretKey::new(
            secret_key.as_bytes(),
        ))
        .unwrap();
    client
        .consume_signature(consume_req(&reply.signature))
        .await
        .unwrap();
    // The key is never logged.
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(!log.contains(&secret_key));
    assert!(
        log.contains("in-memory store"),
        "the single-replica warning is logged: {log}"
    );
}

#[tokio::test]
async fn flags_read_their_environment_variables() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let mut cmd = serve_command();
    cmd.env("VOD_SIGNER_KEYS_DIR", keys.path())
        .env("VOD_SIGNER_ACTIVE_KEY", OTHER_ID)
        .env("VOD_SIGNER_REDIS_URL", redis.url())
        .env("VOD_SIGNER_DEFAULT_TTL", "120")
        .env("VOD_SIGNER_KEY_PREFIX", "envtest:");
    let server = ServerProcess::spawn(cmd);
    let mut client = connect(server.addr).await;
    let claims = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .claims
        .unwrap();
    assert_eq!(claims.secret_id, OTHER_ID);
    assert_eq!(claims.expire_time - claims.current_time_stamp, 120);
    let key = format!("envtest:sig:{OTHER_ID}:{}", claims.random);
    // Recorded under the prefix (the compact issued form: an integer).
    let value = redis.cli(&["GET", &key]).unwrap();
    assert!(value.parse::<u64>().is_ok(), "{value}");
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service() {
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    use tonic_reflection::pb::{v1, v1alpha};
    let request = v1::ServerReflectionRequest {
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
        ..Default::default()
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reply {reply:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"vodsigner.v1.SignatureService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let request = v1alpha::ServerReflectionRequest {
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "vodsigner.v1.SignatureService".into(),
            ),
        ),
        ..Default::default()
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{reply:?}"
    );
}

#[test]
fn bad_keys_dir_exits_with_a_message_naming_the_file() {
    let keys = keys_dir();
    std::fs::write(keys.path().join("bad:name"), "k").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--keys-dir"])
        .arg(keys.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad:name"), "{stderr}");
}

#[test]
fn serve_without_keys_says_what_is_missing() {
    let out = serve_command().output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--keys-dir"), "{stderr}");
}

/// A gRPC answer is several small writes; without TCP_NODELAY each waits ~40 ms for the
/// client's delayed ACK (Nagle), every call. So the fastest of 20 calls one after another
/// shows it: a busy machine slows some calls, not all of them, and never makes the fastest
/// one wait for a delayed ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_not_held_back_by_nagle() {
    // Linux's shortest delayed ACK (TCP_DELACK_MIN).
    const DELAYED_ACK: Duration = Duration::from_millis(40);
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &[]);
    let mut client = connect(server.addr).await;
    client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
        calls.push(started.elapsed());
    }
    calls.sort();
    assert!(
        calls[0] < DELAYED_ACK,
        "even the fastest of 20 calls took {:?} (all: {calls:?}): is TCP_NODELAY off?",
        calls[0]
    );
}
