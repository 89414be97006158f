//! Audit and upload events: the Redis stream, WatchEvents (live, resumed, filtered), the cap,
//! and the in-memory store's log lines.

mod common;

use std::time::Duration;

use common::*;
use tonic::Streaming;
use vod_signer::proto::{
    Event, EventKind, IssueSignatureRequest, RevokeSignatureRequest, UploadPolicy,
    WatchEventsRequest,
};
use vod_signer::reason::Reason;

async fn next(stream: &mut Streaming<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event within 5 s")
        .unwrap()
        .expect("the stream is open")
}

fn issue_for(subject: &str, source_context: &str) -> IssueSignatureRequest {
    IssueSignatureRequest {
        subject: subject.into(),
        policy: Some(UploadPolicy {
            source_context: source_context.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// SIGTERM, and waits (bounded by the default `--drain-timeout`, 20 s) for a clean exit. The
/// wait is async: this test's runtime must keep running the client's connection, which the
/// draining server waits for to close.
async fn stop_gracefully(server: &mut ServerProcess) {
    server.terminate();
    assert_eq!(server.exited(Duration::from_secs(25)).await, Some(0));
    server.wait_log(&["drained: exiting"], Duration::from_secs(1));
}

#[tokio::test]
async fn redis_stream_watch_resume_and_filter() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &["--redis-url", &redis.url()]);
    let mut client = connect(server.addr).await;
    let mut live = client
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let only_consumed = WatchEventsRequest {
        kinds: vec![EventKind::Consumed as i32],
        ..Default::default()
    };
    let mut consumed_only = client
        .watch_events(only_consumed)
        .await
        .unwrap()
        .into_inner();
    // No wait here: WatchEvents answers (its headers) only once the watch has fixed its
    // starting point, so every event published from now on is seen.

    let reply = client
        .issue_signature(issue_for("user-42", "user-42/upload-1"))
        .await
        .unwrap()
        .into_inner();
    let random = reply.claims.unwrap().random;
    client
        .consume_signature(consume_req(&reply.signature))
        .await
        .unwrap();
    assert_eq!(
        refused(
            client
                .consume_signature(consume_req(&reply.signature))
                .await
        ),
        Reason::SignatureAlreadyUsed
    );
    let other = client
        .issue_signature(issue_for("user-7", ""))
        .await
        .unwrap()
        .into_inner()
        .signature;
    client
        .revoke_signature(RevokeSignatureRequest { signature: other })
        .await
        .unwrap();

    let issued = next(&mut live).await;
    assert_eq!(
        (issued.kind, issued.subject.as_str()),
        (EventKind::Issued as i32, "user-42")
    );
    assert_eq!(
        (issued.secret_id.as_str(), issued.random),
        (SECRET_ID, random)
    );
    let consumed = next(&mut live).await;
    assert_eq!(consumed.kind, EventKind::Consumed as i32);
    assert_eq!(
        (consumed.random, consumed.source_context.as_str()),
        (random, "user-42/upload-1")
    );
    assert!(consumed.time >= now() - 5);
    let refusal = next(&mut live).await;
    assert_eq!(refusal.kind, EventKind::ConsumeRefused as i32);
    assert_eq!(
        (refusal.reason.as_str(), refusal.random),
        ("SIGNATURE_ALREADY_USED", random)
    );
    assert_eq!(next(&mut live).await.kind, EventKind::Issued as i32);
    assert_eq!(next(&mut live).await.kind, EventKind::Revoked as i32);

    let only = next(&mut consumed_only).await;
    assert_eq!(
        (only.kind, only.random),
        (EventKind::Consumed as i32, random)
    );

    // The same events are in the stream, and a watcher can resume after any of them.
    assert_eq!(redis.cli(&["XLEN", "vodsigner:events"]).unwrap(), "5");
    let resume = WatchEventsRequest {
        start_id: consumed.id.clone(),
        ..Default::default()
    };
    let mut resumed = client.watch_events(resume).await.unwrap().into_inner();
    assert_eq!(next(&mut resumed).await.id, refusal.id);
    let from_start = WatchEventsRequest {
        start_id: "0".into(),
        ..Default::default()
    };
    let mut all = client.watch_events(from_start).await.unwrap().into_inner();
    assert_eq!(next(&mut all).await.id, issued.id);
    let bad = WatchEventsRequest {
        start_id: "yesterday".into(),
        ..Default::default()
    };
    assert_eq!(
        refused(client.watch_events(bad).await),
        Reason::InvalidRequest
    );
}

#[tokio::test]
async fn the_stream_stays_capped() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let mut server = ServerProcess::start(
        keys.path(),
        &["--redis-url", &redis.url(), "--events-maxlen", "50"],
    );
    let mut client = connect(server.addr).await;
    for _ in 0..600 {
        client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
    }
    // A drained server has written every event of the calls it served before it exits.
    stop_gracefully(&mut server).await;
    let added = redis.cli(&["XINFO", "STREAM", "vodsigner:events"]).unwrap();
    assert!(
        added.contains("entries-added\n600"),
        "all 600 events were written: {added}"
    );
    let len: u64 = redis
        .cli(&["XLEN", "vodsigner:events"])
        .unwrap()
        .parse()
        .unwrap();
    // MAXLEN ~ trims whole stream nodes (100 entries by default): at most cap + one node.
    assert!((50..=150).contains(&len), "XLEN {len}");
}

#[tokio::test]
async fn events_can_be_turned_off() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let mut server = ServerProcess::start(
        keys.path(),
        &["--redis-url", &redis.url(), "--events-maxlen", "0"],
    );
    let mut client = connect(server.addr).await;
    client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap();
    assert_eq!(
        refused(client.watch_events(WatchEventsRequest::default()).await),
        Reason::InvalidRequest
    );
    // A drained server has written whatever events it had before it exits: none.
    stop_gracefully(&mut server).await;
    assert_eq!(redis.cli(&["EXISTS", "vodsigner:events"]).unwrap(), "0");
}

#[tokio::test]
async fn in_memory_events_go_to_the_log_and_to_watchers() {
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &[]);
    let mut client = connect(server.addr).await;
    let mut live = client
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let sig = client
        .issue_signature(issue_for("user-9", "upload-9"))
        .await
        .unwrap()
        .into_inner()
        .signature;
    client.consume_signature(consume_req(&sig)).await.unwrap();
    assert_eq!(next(&mut live).await.kind, EventKind::Issued as i32);
    let consumed = next(&mut live).await;
    assert_eq!(
        (consumed.kind, consumed.source_context.as_str()),
        (EventKind::Consumed as i32, "upload-9")
    );
    let history = WatchEventsRequest {
        start_id: "0".into(),
        ..Default::default()
    };
    assert_eq!(
        refused(client.watch_events(history).await),
        Reason::InvalidRequest
    );

    // The log lines were written before the watcher got the events; the thread reading the
    // child's stderr may still be behind, so poll it (bounded).
    let audit_lines = || {
        let log = server.stderr.lock().unwrap().join("\n");
        let audit: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "audit event")
            .collect();
        (log, audit)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (log, audit) = loop {
        let (log, audit) = audit_lines();
        if audit.len() >= 2 || std::time::Instant::now() > deadline {
            break (log, audit);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(audit.len(), 2, "{log}");
    assert_eq!(
        (
            audit[1]["kind"].as_str(),
            audit[1]["source_context"].as_str()
        ),
        (Some("consumed"), Some("upload-9"))
    );
    assert_eq!(audit[0]["subject"], "user-9");
}

#[tokio::test]
async fn revoke_subject_emits_one_revoked_event_per_signature() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &["--redis-url", &redis.url()]);
    let mut client = connect(server.addr).await;
    let only_revoked = WatchEventsRequest {
        kinds: vec![EventKind::Revoked as i32],
        ..Default::default()
    };
    let mut revoked = client
        .watch_events(only_revoked)
        .await
        .unwrap()
        .into_inner();
    // No wait: WatchEvents answers only once its starting point is fixed (see
    // `redis_stream_watch_resume_and_filter`).
    let mut randoms = Vec::new();
    for i in 0..2 {
        let reply = client
            .issue_signature(issue_for("user-9", &format!("user-9/upload-{i}")))
            .await
            .unwrap()
            .into_inner();
        randoms.push(reply.claims.unwrap().random);
    }
    let answer = client
        .revoke_subject(vod_signer::proto::RevokeSubjectRequest {
            subject: "user-9".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.revoked, 2);
    let (a, b) = (next(&mut revoked).await, next(&mut revoked).await);
    let mut seen = vec![a.random, b.random];
    seen.sort_unstable();
    randoms.sort_unstable();
    assert_eq!(seen, randoms);
    for e in [a, b] {
        assert_eq!(e.kind, EventKind::Revoked as i32);
        assert_eq!(e.subject, "user-9");
        assert!(e.source_context.starts_with("user-9/upload-"), "{e:?}");
    }
}
