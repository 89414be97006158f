//! Pushed notifications through the public surface: a real HTTP receiver gets one signed
//! POST per completion (Standard Webhooks headers that its libraries accept), failed attempts
//! are retried with the same `webhook-id`, a receiver that never answers costs attempts but
//! not the queue, one past `--notify-max-age` is dead-lettered, and two replicas sharing a
//! Redis deliver each notification once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::receiver::{Received, Receiver};
use common::*;
use tonic::transport::Channel;
use vod_signer::notify::{Delivery, Lifecycle, PushTarget, Secrets};
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{CompleteUploadRequest, IssueSignatureRequest, UploadPolicy};
use vod_signer::service::Settings;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn pushing(receiver: &Receiver, attempt_timeout: Duration, max_age: Duration) -> Settings {
    Settings {
        lifecycle: Lifecycle {
            delivery: Delivery::Push(Arc::new(PushTarget {
                url: receiver.url().parse().unwrap(),
                secrets: Secrets::parse(SECRET).unwrap(),
                attempt_timeout,
                concurrency: 8,
            })),
            max_age,
            ..Lifecycle::default()
        },
        ..Settings::default()
    }
}

/// Issues, consumes and completes one upload (file `file_id`); answers its signature.
async fn upload(
    client: &mut SignatureServiceClient<Channel>,
    subject: &str,
    file_id: &str,
) -> String {
    let signature = client
        .issue_signature(IssueSignatureRequest {
            subject: subject.into(),
            policy: Some(UploadPolicy {
                source_context: format!("{subject}/{file_id}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .signature;
    client
        .consume_signature(consume_with(&signature, file_id))
        .await
        .unwrap();
    client
        .complete_upload(CompleteUploadRequest {
            signature: signature.clone(),
            file_id: file_id.into(),
            file_size: 10,
            media_url: format!("https://media.example/{file_id}"),
            media_type: "mp4".into(),
        })
        .await
        .unwrap();
    signature
}

fn ids(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.id.clone()).collect()
}

async fn push_server(backend: Backend, settings: Settings) -> TestServer {
    TestServer::start_with(backend, settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_signed_and_delivered_once_memory() {
    pushes_are_signed_and_delivered_once(Backend::Memory).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_signed_and_delivered_once_redis() {
    pushes_are_signed_and_delivered_once(Backend::Redis).await
}

async fn pushes_are_signed_and_delivered_once(backend: Backend) {
    let receiver = Receiver::start().await;
    let server = push_server(
        backend,
        pushing(&receiver, Duration::from_secs(5), Lifecycle::MAX_AGE),
    )
    .await;
    let mut client = server.client().await;
    upload(&mut client, "user-1", "f-1").await;
    let got = receiver
        .wait_for(Duration::from_secs(10), "one push", |r| !r.is_empty())
        .await;
    let push = &got[0];
    // What a Standard Webhooks library checks: the signature over id.timestamp.body with
    // the shared secret, and a timestamp near now.
    let secrets = Secrets::parse(SECRET).unwrap();
    assert!(secrets.verify(&push.id, push.timestamp, &push.body, &push.signature));
    assert!((push.timestamp - vod_signer::clock::unix_now()).abs() < 60);
    assert!(push.id.starts_with("msg_"));
    let body = push.json();
    assert_eq!(body["EventType"], "NewFileUpload");
    assert_eq!(body["FileUploadEvent"]["FileId"], "f-1");
    assert_eq!(body["VodSigner"]["Subject"], "user-1");
    // Delivered once: confirmed, counted, not sent again.
    let metrics = &server.metrics;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while Exposition::parse(metrics.encode())
        .sum("vodsigner_notifications_total", &[("result", "delivered")])
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not counted as delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "{:?}",
        ids(&receiver.received())
    );
    let text = Exposition::parse(metrics.encode());
    assert_eq!(
        text.sum("vodsigner_notifications_total", &[("result", "queued")]),
        1.0
    );
    assert_eq!(
        text.sum("vodsigner_notifications_total", &[("result", "retried")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_the_same_webhook_id() {
    // 500, then a reset-free silence (no answer within the attempt timeout), then 200.
    let receiver = Receiver::answering(Arc::new(|n| match n {
        0 => Some(StatusCode::INTERNAL_SERVER_ERROR),
        1 => None,
        _ => Some(StatusCode::NO_CONTENT),
    }))
    .await;
    let server = push_server(
        Backend::Redis,
        pushing(&receiver, Duration::from_millis(500), Lifecycle::MAX_AGE),
    )
    .await;
    let mut client = server.client().await;
    upload(&mut client, "user-2", "f-2").await;
    // Backoff 0.5-1 s, then 1-2 s, plus the silent attempt's 0.5 s.
    let got = receiver
        .wait_for(Duration::from_secs(15), "a third, accepted attempt", |r| {
            r.iter().any(|p| p.answered == Some(204))
        })
        .await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|p| p.id == got[0].id), "{:?}", ids(&got));
    assert!(got.iter().all(|p| p.body == got[0].body));
    let secrets = Secrets::parse(SECRET).unwrap();
    // Each attempt is signed anew.
    assert!(
        got.iter()
            .all(|p| secrets.verify(&p.id, p.timestamp, &p.body, &p.signature))
    );
    let text = Exposition::parse(server.metrics.encode());
    assert_eq!(
        text.sum("vodsigner_notifications_total", &[("result", "retried")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_receiver_does_not_stall_the_queue() {
    // The first push never gets an answer (the receiver holds it); the others do.
    let receiver = Receiver::answering(Arc::new(|n| (n > 0).then_some(StatusCode::OK))).await;
    let server = push_server(
        Backend::Memory,
        pushing(&receiver, Duration::from_secs(30), Lifecycle::MAX_AGE),
    )
    .await;
    let mut client = server.client().await;
    for i in 0..5 {
        upload(&mut client, "user-3", &format!("f-{i}")).await;
    }
    // The four others are delivered while the first attempt still waits for its answer.
    receiver
        .wait_for(Duration::from_secs(10), "four answered pushes", |r| {
            r.iter().filter(|p| p.answered == Some(200)).count() == 4
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_past_its_max_age_is_dead_lettered_and_kept() {
    let receiver = Receiver::answering(Arc::new(|_| Some(StatusCode::SERVICE_UNAVAILABLE))).await;
    let server = push_server(
        Backend::Redis,
        pushing(&receiver, Duration::from_secs(1), Duration::from_secs(2)),
    )
    .await;
    let mut client = server.client().await;
    upload(&mut client, "user-4", "f-4").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = Exposition::parse(server.metrics.encode());
        if text.sum(
            "vodsigner_notifications_total",
            &[("result", "dead_lettered")],
        ) == 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered:\n{}",
            text.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Kept in Redis with why, and no longer retried.
    let redis = server.redis.as_ref().unwrap();
    let dead: usize = (0..16)
        .map(|shard| {
            redis
                .cli(&["XLEN", &format!("vodsigner:uploads:{{{shard}}}:dead")])
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(dead, 1);
    let attempts = receiver.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.received().len(),
        attempts,
        "retried after the dead letter"
    );
    assert!(attempts >= 2, "{attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_notification_once() {
    let receiver = Receiver::start().await;
    let redis = RedisServer::start();
    let settings = pushing(&receiver, Duration::from_secs(5), Lifecycle::MAX_AGE);
    let store = |url: &str| {
        Arc::new(redis_store_within(
            url,
            "vodsigner:",
            SEMANTIC_STORE_TIMEOUT,
        ))
    };
    let one = TestServer::start_on(store(&redis.url()), None, settings.clone()).await;
    let two = TestServer::start_on(store(&redis.url()), None, settings).await;
    let mut a = one.client().await;
    let mut b = two.client().await;
    for i in 0..40 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        upload(client, "user-5", &format!("f-{i}")).await;
    }
    let got = receiver
        .wait_for(Duration::from_secs(20), "40 pushes", |r| r.len() >= 40)
        .await;
    // Give a duplicate the time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut seen = ids(&receiver.received());
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 40);
    assert_eq!(
        receiver.received().len(),
        40,
        "{} pushes for 40 notifications",
        got.len()
    );
}

#[test]
fn the_push_needs_a_secret_and_one_mode() {
    let keys = keys_dir();
    let start = |extra: &[&str]| {
        let out = serve_command()
            .args(["--keys-dir"])
            .arg(keys.path())
            .args(["--active-key", SECRET_ID])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let log = start(&["--notify-url", "http://127.0.0.1:9/hook"]);
    assert!(log.contains("--notify-secret-file"), "{log}");
    let log = start(&[
        "--notify-url",
        "http://127.0.0.1:9/hook",
        "--notify-mode",
        "pull",
    ]);
    assert!(log.contains("give one of them"), "{log}");
    assert!(!log.contains("  "), "a message with a run of spaces: {log}");
    let secrets = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secrets.path(), "not a secret\n").unwrap();
    let log = start(&[
        "--notify-url",
        "http://127.0.0.1:9/hook",
        "--notify-secret-file",
        secrets.path().to_str().unwrap(),
    ]);
    assert!(log.contains("line 1"), "{log}");
    assert!(
        !log.contains("not a secret"),
        "the secret file's content was logged: {log}"
    );
}
