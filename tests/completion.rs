//! The upload's end through the public gRPC surface: CompleteUpload (CONSUMED -> COMPLETED, a
//! repeat with the same file, another file refused, before the consume refused, a file over
//! maxFileSize refused and recorded), ABANDONED after the completion window and a late
//! completion, the states everywhere (verify, consume, revoke, list), and the notifications
//! handed out by PullEvents and confirmed by ConfirmEvents. On the in-memory store, one Redis
//! and a Redis Cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tonic::transport::Channel;
use vod_signer::audit::LogEvents;
use vod_signer::notify::{Delivery, Lifecycle};
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{
    CompleteUploadRequest, CompleteUploadResponse, ConfirmEventsRequest, IssueSignatureRequest,
    ListSignaturesRequest, Notification, PullEventsRequest, RevokeSignatureRequest, SignatureState,
    UploadPolicy, VerifySignatureRequest, WatchEventsRequest,
};
use vod_signer::reason::Reason;
use vod_signer::service::Settings;
use vod_signer::store::MemoryStore;

on_stores!(
    completion_moves_consumed_to_completed_once,
    a_file_over_max_file_size_is_refused_and_the_upload_stays_consumed,
    an_upload_left_consumed_past_the_window_is_abandoned_then_completes_late,
    pulled_notifications_are_handed_out_again_until_confirmed,
);

/// Pull mode with a short confirmation window, and `window` as the completion window.
fn pulling(window: Duration) -> Settings {
    Settings {
        lifecycle: Lifecycle {
            completion_window: window,
            delivery: Delivery::Pull,
            pull_confirm_within: Duration::from_secs(1),
            ..Lifecycle::default()
        },
        ..Settings::default()
    }
}

async fn issued(
    client: &mut SignatureServiceClient<Channel>,
    subject: &str,
    context: &str,
) -> String {
    client
        .issue_signature(IssueSignatureRequest {
            subject: subject.into(),
            policy: Some(UploadPolicy {
                source_context: context.into(),
                max_file_size: Some(1000),
                storage_region: "ap-chongqing".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .signature
}

fn complete_req(signature: &str, file_id: &str, size: u64) -> CompleteUploadRequest {
    CompleteUploadRequest {
        signature: signature.into(),
        file_id: file_id.into(),
        file_size: size,
        media_url: format!("https://media.example/{file_id}.mp4"),
        media_type: "mp4".into(),
    }
}

async fn complete(
    client: &mut SignatureServiceClient<Channel>,
    signature: &str,
    file_id: &str,
    size: u64,
) -> Result<CompleteUploadResponse, tonic::Status> {
    client
        .complete_upload(complete_req(signature, file_id, size))
        .await
        .map(|r| r.into_inner())
}

async fn consume_sized(
    client: &mut SignatureServiceClient<Channel>,
    signature: &str,
    key: &str,
) -> i64 {
    let mut req = consume_with(signature, key);
    req.file_size = Some(500);
    client
        .consume_signature(req)
        .await
        .unwrap()
        .into_inner()
        .consumed_at
}

async fn state_of(client: &mut SignatureServiceClient<Channel>, signature: &str) -> SignatureState {
    client
        .verify_signature(VerifySignatureRequest {
            signature: signature.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .state()
}

/// Pulls until `want` notifications came (each pull waits up to 1 s for a first one), at
/// most `within`.
async fn pull(
    client: &mut SignatureServiceClient<Channel>,
    want: usize,
    within: Duration,
) -> Vec<Notification> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < deadline {
        let reply = client
            .pull_events(PullEventsRequest {
                max: 16,
                wait_seconds: 1,
            })
            .await
            .unwrap()
            .into_inner();
        got.extend(reply.notifications);
    }
    got
}

fn body(n: &Notification) -> Value {
    serde_json::from_str(&n.body).unwrap()
}

async fn completion_moves_consumed_to_completed_once(backend: Backend) {
    let server = TestServer::start_with(backend, pulling(Duration::from_secs(3600))).await;
    let mut client = server.client().await;
    let sig = issued(&mut client, "user-7", "user-7/upload-1").await;

    // Before the consume: typed refusal, nothing changes.
    let early = complete(&mut client, &sig, "f-1", 500).await;
    assert_eq!(refused(early), Reason::SignatureNotConsumed);
    assert_eq!(state_of(&mut client, &sig).await, SignatureState::Issued);

    let consumed_at = consume_sized(&mut client, &sig, "upload-1").await;
    assert_eq!(state_of(&mut client, &sig).await, SignatureState::Consumed);
    server.clock.advance(5);
    let done = complete(&mut client, &sig, "f-1", 500).await.unwrap();
    assert!(!done.late);
    assert_eq!(done.completed_at, consumed_at + 5);
    assert_eq!(
        done.claims.unwrap().policy.unwrap().source_context,
        "user-7/upload-1"
    );

    // The same file again: the same success; another file: refused.
    server.clock.advance(5);
    let again = complete(&mut client, &sig, "f-1", 500).await.unwrap();
    assert_eq!((again.completed_at, again.late), (done.completed_at, false));
    let other = complete(&mut client, &sig, "f-2", 500).await;
    assert_eq!(refused(other), Reason::UploadAlreadyCompleted);

    // Every call knows the state.
    assert_eq!(state_of(&mut client, &sig).await, SignatureState::Completed);
    let mut replay = consume_req(&sig);
    replay.file_size = Some(500);
    assert_eq!(
        refused(client.consume_signature(replay).await),
        Reason::SignatureAlreadyUsed
    );
    // The gateway's retry of its consume, with its key, still gets its success.
    assert_eq!(
        consume_sized(&mut client, &sig, "upload-1").await,
        consumed_at
    );
    let revoked = client
        .revoke_signature(RevokeSignatureRequest {
            signature: sig.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.previous_state(), SignatureState::Completed);
    let listed = client
        .list_signatures(ListSignaturesRequest {
            subject: "user-7".into(),
            states: vec![SignatureState::Completed as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.signatures.len(), 1);
    assert_eq!(listed.signatures[0].changed_at, done.completed_at);

    // One notification, whatever the repeats: Tencent's shape, with who and which nonce.
    let got = pull(&mut client, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let b = body(&got[0]);
    assert_eq!(b["EventType"], "NewFileUpload");
    assert_eq!(b["FileUploadEvent"]["FileId"], "f-1");
    assert_eq!(b["FileUploadEvent"]["MetaData"]["Size"], 500);
    let info = &b["FileUploadEvent"]["MediaBasicInfo"];
    assert_eq!(info["SourceInfo"]["SourceType"], "Upload");
    assert_eq!(info["SourceInfo"]["SourceContext"], "user-7/upload-1");
    assert_eq!(info["MediaUrl"], "https://media.example/f-1.mp4");
    assert_eq!(info["StorageRegion"], "ap-chongqing");
    assert_eq!(b["VodSigner"]["Subject"], "user-7");
    assert_eq!(b["VodSigner"]["SecretId"], SECRET_ID);
    assert_eq!(b["VodSigner"]["Late"], false);
    assert!(got[0].webhook_id.starts_with("msg_"));
    let confirmed = client
        .confirm_events(ConfirmEventsRequest {
            handles: vec![got[0].handle.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .confirmed;
    assert_eq!(confirmed, 1);
    // Confirmed once only; nothing more to pull.
    let twice = client
        .confirm_events(ConfirmEventsRequest {
            handles: vec![got[0].handle.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .confirmed;
    assert_eq!(twice, 0);
    let rest = client
        .pull_events(PullEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(rest.notifications.is_empty(), "{rest:?}");
    // A handle that is not one is refused, typed.
    let bad = client
        .confirm_events(ConfirmEventsRequest {
            handles: vec!["nope".into()],
        })
        .await;
    assert_eq!(refused(bad), Reason::InvalidRequest);
}

async fn a_file_over_max_file_size_is_refused_and_the_upload_stays_consumed(backend: Backend) {
    let server = TestServer::start_with(backend, pulling(Duration::from_secs(3600))).await;
    let mut client = server.client().await;
    let sig = issued(&mut client, "user-8", "user-8/upload-1").await;
    consume_sized(&mut client, &sig, "k").await;
    let over = complete(&mut client, &sig, "f-big", 1001).await;
    assert_eq!(refused(over), Reason::FileTooLarge);
    assert_eq!(state_of(&mut client, &sig).await, SignatureState::Consumed);
    // Bad requests are typed too.
    for bad in [
        complete_req(&sig, "", 10),
        complete_req(&sig, &"x".repeat(257), 10),
        CompleteUploadRequest {
            media_url: "u".repeat(2049),
            ..complete_req(&sig, "f", 10)
        },
    ] {
        assert_eq!(
            refused(client.complete_upload(bad).await),
            Reason::InvalidRequest
        );
    }
    let now = server.now();
    let forged = forge(
        SECRET_ID,
        "wrong-key",
        now,
        now + 600,
        1,
        &Default::default(),
    );
    assert_eq!(
        refused(complete(&mut client, &forged, "f", 10).await),
        Reason::SignatureMismatch
    );
    // A right-sized file still completes it.
    let done = complete(&mut client, &sig, "f-ok", 1000).await.unwrap();
    assert!(!done.late);
    assert_eq!(state_of(&mut client, &sig).await, SignatureState::Completed);
}

async fn an_upload_left_consumed_past_the_window_is_abandoned_then_completes_late(
    backend: Backend,
) {
    let window = Duration::from_secs(8);
    let settings = pulling(window);
    let period = settings.lifecycle.sweep_period();
    let server = TestServer::start_with(backend, settings).await;
    let mut client = server.client().await;
    let sig = issued(&mut client, "user-9", "user-9/upload-1").await;
    let on_time = issued(&mut client, "user-9", "user-9/upload-2").await;
    consume_sized(&mut client, &sig, "k1").await;
    consume_sized(&mut client, &on_time, "k2").await;
    complete(&mut client, &on_time, "f-on-time", 10)
        .await
        .unwrap();

    // Not yet due: a few sweeps leave it consumed.
    server.clock.advance(window.as_secs() as i64 - 1);
    tokio::time::sleep(period * 3).await;
    assert_eq!(state_of(&mut client, &sig).await, SignatureState::Consumed);

    // Due: the sweep (one lease, a pass every `period`) marks it within a lease and a pass.
    server.clock.advance(2);
    let deadline = tokio::time::Instant::now() + period * 8;
    while state_of(&mut client, &sig).await != SignatureState::Abandoned {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ABANDONED within {:?}",
            period * 8
        );
        tokio::time::sleep(period / 4).await;
    }
    // The on-time one is untouched.
    assert_eq!(
        state_of(&mut client, &on_time).await,
        SignatureState::Completed
    );
    let listed = client
        .list_signatures(ListSignaturesRequest {
            subject: "user-9".into(),
            states: vec![SignatureState::Abandoned as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.signatures.len(), 1);

    // Both notifications: the completion, then the abandonment.
    let got = pull(&mut client, 2, Duration::from_secs(10)).await;
    let types: Vec<String> = got
        .iter()
        .map(|n| body(n)["EventType"].as_str().unwrap().to_owned())
        .collect();
    assert!(types.contains(&"UploadAbandoned".into()), "{types:?}");
    assert!(types.contains(&"NewFileUpload".into()), "{types:?}");
    let abandoned = got
        .iter()
        .find(|n| body(n)["EventType"] == "UploadAbandoned")
        .unwrap();
    let b = body(abandoned);
    assert_eq!(
        b["FileUploadEvent"]["MediaBasicInfo"]["SourceInfo"]["SourceContext"],
        "user-9/upload-1"
    );
    assert_eq!(b["VodSigner"]["Subject"], "user-9");
    // What the signature said, kept with the awaiting upload: as the completion's body has it.
    assert_eq!(
        b["FileUploadEvent"]["MediaBasicInfo"]["StorageRegion"],
        "ap-chongqing"
    );

    // The upload outlived the window: it still completes, late.
    let late = complete(&mut client, &sig, "f-late", 10).await.unwrap();
    assert!(late.late);
    assert_eq!(state_of(&mut client, &sig).await, SignatureState::Completed);
    let more = pull(&mut client, 3, Duration::from_secs(10)).await;
    let late_note = more
        .iter()
        .find(|n| body(n)["FileUploadEvent"]["FileId"] == "f-late")
        .unwrap_or_else(|| panic!("no late completion in {more:?}"));
    assert_eq!(body(late_note)["VodSigner"]["Late"], true);
    assert_eq!(
        scrape_metrics(&server).sum("vodsigner_uploads_abandoned_total", &[]),
        1.0
    );
}

async fn pulled_notifications_are_handed_out_again_until_confirmed(backend: Backend) {
    let server = TestServer::start_with(backend, pulling(Duration::from_secs(3600))).await;
    let mut client = server.client().await;
    let sig = issued(&mut client, "user-10", "user-10/upload-1").await;
    consume_sized(&mut client, &sig, "k").await;
    complete(&mut client, &sig, "f-1", 10).await.unwrap();
    let first = pull(&mut client, 1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    // Not confirmed: nothing more for a while, then the same notification again.
    let none = client
        .pull_events(PullEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.notifications.is_empty());
    let again = pull(&mut client, 1, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].webhook_id, first[0].webhook_id);
    assert_eq!(again[0].body, first[0].body);
    let confirmed = client
        .confirm_events(ConfirmEventsRequest {
            handles: vec![again[0].handle.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .confirmed;
    assert_eq!(confirmed, 1);
    // Past the confirmation window, nothing comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = client
        .pull_events(PullEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(after.notifications.is_empty(), "{after:?}");
    // Out-of-range requests are typed.
    let too_many = client
        .pull_events(PullEventsRequest {
            max: 17,
            wait_seconds: 0,
        })
        .await;
    assert_eq!(refused(too_many), Reason::InvalidRequest);
    let too_long = client
        .pull_events(PullEventsRequest {
            max: 1,
            wait_seconds: 6,
        })
        .await;
    assert_eq!(refused(too_long), Reason::InvalidRequest);
}

/// The server's metrics, in-process.
fn scrape_metrics(server: &TestServer) -> Exposition {
    Exposition::parse(server.metrics.encode())
}

#[tokio::test]
async fn without_pull_mode_pull_calls_are_refused_and_nothing_is_queued() {
    let server = TestServer::start(Backend::Memory).await;
    let mut client = server.client().await;
    let sig = issued(&mut client, "user-11", "c").await;
    consume_sized(&mut client, &sig, "k").await;
    complete(&mut client, &sig, "f", 10).await.unwrap();
    let pulled = client.pull_events(PullEventsRequest::default()).await;
    assert_eq!(refused(pulled), Reason::InvalidRequest);
    let text = scrape_metrics(&server);
    assert_eq!(
        text.value("vodsigner_notifications_total", &[("result", "queued")]),
        Some(0.0),
        "{}",
        text.text
    );
}

#[tokio::test]
async fn completions_abandonments_and_refusals_are_events() {
    let events = Arc::new(LogEvents::new());
    let server = TestServer::start_with_events(
        Arc::new(MemoryStore::new()),
        None,
        pulling(Duration::from_secs(8)),
        test_options(),
        events,
    )
    .await;
    let mut client = server.client().await;
    let mut watch = client
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let sig = issued(&mut client, "user-12", "user-12/upload-1").await;
    consume_sized(&mut client, &sig, "k").await;
    assert_eq!(
        refused(complete(&mut client, &sig, "f-big", 5000).await),
        Reason::FileTooLarge
    );
    complete(&mut client, &sig, "f-1", 10).await.unwrap();
    let other = issued(&mut client, "user-12", "user-12/upload-2").await;
    consume_sized(&mut client, &other, "k2").await;
    server.clock.advance(9);
    let mut kinds = Vec::new();
    while !kinds.contains(&vod_signer::proto::EventKind::Abandoned) {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        if event.kind() == vod_signer::proto::EventKind::CompleteRefused {
            assert_eq!(event.reason, "FILE_TOO_LARGE");
        }
        if event.kind() == vod_signer::proto::EventKind::Completed {
            assert_eq!(event.file_id, "f-1");
            // The subject is on the issue event; later ones join it by nonce.
            assert_eq!(event.subject, "");
        }
        if event.kind() == vod_signer::proto::EventKind::Abandoned {
            assert_eq!(event.source_context, "user-12/upload-2");
        }
        kinds.push(event.kind());
    }
    for kind in [
        vod_signer::proto::EventKind::CompleteRefused,
        vod_signer::proto::EventKind::Completed,
    ] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
}
