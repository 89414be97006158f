//! The typed client: refusals as reasons, safe retries (consume only with its idempotency
//! key, CompleteUpload with the same file, each through a lost reply), the upload's end and
//! its pulled notifications, TLS with a bearer token.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pki::Ca;
use common::proxy::{Fault, FaultProxy};
use common::*;
use vod_signer::client::{Client, ClientConfig, ClientError, ClientTls};
use vod_signer::notify::{Delivery, Lifecycle};
use vod_signer::proto::{
    CompleteUploadRequest, IssueSignatureRequest, Notification, SignatureState, UploadPolicy,
};
use vod_signer::quota::{Quota, Scope};
use vod_signer::reason::Reason;
use vod_signer::service::Settings;

/// Notifications kept for PullEvents (`--notify-mode pull`).
fn pulling() -> Settings {
    Settings {
        lifecycle: Lifecycle {
            delivery: Delivery::Pull,
            ..Lifecycle::default()
        },
        ..Settings::default()
    }
}

fn completion(signature: &str, file_id: &str) -> CompleteUploadRequest {
    CompleteUploadRequest {
        signature: signature.into(),
        file_id: file_id.into(),
        file_size: 500,
        media_url: format!("https://media.example/{file_id}.mp4"),
        media_type: "mp4".into(),
    }
}

/// Pulls (each call waiting up to 1 s for a first notification) until `want` came, for at
/// most `within`.
async fn pull(client: &Client, want: usize, within: Duration) -> Vec<Notification> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < deadline {
        got.extend(client.pull_events(16, 1).await.unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_reasons_and_retries_are_safe() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port).await;
    let store = Arc::new(redis_store(&proxy.url(), "vodsigner:"));
    let settings = Settings {
        quotas: vec![Quota::parse(Scope::Subject, "subject", "100/1h").unwrap()],
        ..Settings::default()
    };
    let server = TestServer::start_on(store, Some(redis), settings).await;
    // Attempts enough to outlast the lost replies: until the heal below, every reply on every
    // new connection is lost too (on a loaded machine that can be several attempts).
    let client = Client::connect(ClientConfig {
        attempts: 8,
        ..ClientConfig::new(format!("http://{}", server.addr))
    })
    .unwrap();

    let issued = client
        .issue(IssueSignatureRequest {
            subject: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sig = issued.signature;
    assert_eq!(
        client.verify(&sig).await.unwrap().state,
        SignatureState::Issued as i32
    );
    let warm = client
        .issue(IssueSignatureRequest {
            subject: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client.consume(&warm.signature, None, None).await.unwrap(); // loads the script

    // The reply of the first attempt is lost; the client retries with the same key and gets
    // the success the first attempt earned.
    proxy.set(Fault::LoseReplies);
    let random = vod_signer::signature::parse(&sig).unwrap().claims.random;
    let record_key = format!("vodsigner:sig:{SECRET_ID}:{random}");
    let redis_port = server.redis.as_ref().unwrap().port;
    let heal = tokio::spawn(async move {
        // Heals once Redis applied the consume (read directly, not through the proxy) and
        // the proxy lost a reply: the attempt's outcome was unknown to the client. Bounded
        // by the client's first attempt (2 s deadline) and its backoff.
        let applied = || {
            std::process::Command::new("redis-cli")
                .args(["-p", &redis_port.to_string(), "GET", &record_key])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).starts_with("v1|consumed|"))
                .unwrap_or(false)
        };
        tokio::time::timeout(Duration::from_secs(6), async {
            proxy.replies_lost(1).await;
            while !applied() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the consume reached Redis while replies were lost");
        proxy.set(Fault::Pass);
        proxy
    });
    let consumed = client.consume(&sig, None, Some("upload-77")).await.unwrap();
    let _proxy = heal.await.unwrap();
    assert!(consumed.consumed_at > 0);
    // Any other consumer is refused, with the reason as a type.
    match client.consume(&sig, None, None).await {
        Err(ClientError::Refused {
            reason: Reason::SignatureAlreadyUsed,
            message,
            ..
        }) => {
            assert!(
                message.starts_with("signature was consumed at"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client
            .consume("garbage", None, None)
            .await
            .unwrap_err()
            .reason(),
        Some(Reason::SignatureMalformed)
    );
    let unknown = client.issue(IssueSignatureRequest {
        subject: "u".into(),
        secret_id: "AKIDnone".into(),
        ..Default::default()
    });
    assert_eq!(
        unknown.await.unwrap_err().reason(),
        Some(Reason::UnknownSecretId)
    );
    assert_eq!(
        client.revoke(&sig).await.unwrap().previous_state,
        SignatureState::Consumed as i32
    );
}

#[tokio::test]
async fn quota_refusals_carry_when_to_retry() {
    let settings = Settings {
        quotas: vec![Quota::parse(Scope::Subject, "subject", "1/1h").unwrap()],
        ..Settings::default()
    };
    let server = TestServer::start_with(Backend::Memory, settings).await;
    let client = Client::connect(ClientConfig::new(format!("http://{}", server.addr))).unwrap();
    let req = IssueSignatureRequest {
        subject: "q".into(),
        ..Default::default()
    };
    client.issue(req.clone()).await.unwrap();
    match client.issue(req).await {
        Err(ClientError::Refused {
            reason: Reason::RateLimited,
            retry_after: Some(after),
            ..
        }) => {
            assert!(after > Duration::from_secs(3000))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tls_and_a_bearer_token() {
    let ca = Ca::new("client test CA");
    let files = tempfile::tempdir().unwrap();
    let leaf = ca.leaf(&["localhost"]);
    std::fs::write(files.path().join("tls.crt"), &leaf.cert).unwrap();
    std::fs::write(files.path().join("tls.key"), &leaf.key).unwrap();
    let digest = vod_signer::auth::token_digest("ops-token-4f1d2a");
    let policy =
        format!("[[caller]]\nname = \"ops\"\nroles = [\"admin\"]\ntoken_sha256 = [\"{digest}\"]\n");
    std::fs::write(files.path().join("policy.toml"), policy).unwrap();
    let path = |name: &str| files.path().join(name).to_str().unwrap().to_owned();
    let keys = keys_dir();
    let args = [
        "--tls-cert",
        &path("tls.crt"),
        "--tls-key",
        &path("tls.key"),
        "--caller-policy",
        &path("policy.toml"),
    ];
    let server = ServerProcess::start(keys.path(), &args);
    let tls = ClientTls {
        ca_pem: Some(ca.pem()),
        identity: None,
        domain: Some("localhost".into()),
    };
    let endpoint = format!("https://localhost:{}", server.addr.port());
    let config = ClientConfig {
        tls: Some(tls),
        ..ClientConfig::new(endpoint)
    };
    let anonymous = Client::connect(config.clone()).unwrap();
    let err = anonymous
        .issue(IssueSignatureRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::CallerUnauthenticated));
    let ops = Client::connect(ClientConfig {
        token: Some("ops-token-4f1d2a".into()),
        ..config
    })
    .unwrap();
    let sig = ops
        .issue(IssueSignatureRequest::default())
        .await
        .unwrap()
        .signature;
    ops.consume(&sig, None, None).await.unwrap();
}

/// A call that outlived its deadline on the server comes back CANCELLED from tonic ("Timeout
/// expired"): its outcome is unknown, so it is retried like DEADLINE_EXCEEDED (a consume with
/// its one idempotency key). The network fault suite found owners giving up on it.
#[test]
fn a_server_side_deadline_is_retryable() {
    let e = ClientError::from(tonic::Status::cancelled("Timeout expired"));
    assert!(e.is_retryable(), "{e:?}");
    let e = ClientError::from(tonic::Status::deadline_exceeded("deadline"));
    assert!(e.is_retryable(), "{e:?}");
    let e = ClientError::from(tonic::Status::invalid_argument("no"));
    assert!(!e.is_retryable(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_complete_once_and_their_notifications_are_pulled_and_confirmed() {
    let server = TestServer::start_with(Backend::Memory, pulling()).await;
    let client = Client::connect(ClientConfig::new(format!("http://{}", server.addr))).unwrap();
    let sig = client
        .issue(IssueSignatureRequest {
            subject: "user-9".into(),
            policy: Some(UploadPolicy {
                source_context: "user-9/upload-1".into(),
                max_file_size: Some(1000),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .signature;
    let early = client.complete_upload(completion(&sig, "f-1")).await;
    assert_eq!(
        early.unwrap_err().reason(),
        Some(Reason::SignatureNotConsumed)
    );
    client.consume(&sig, Some(500), None).await.unwrap();
    let done = client
        .complete_upload(completion(&sig, "f-1"))
        .await
        .unwrap();
    assert!(!done.late);
    // A retry with the same arguments is answered the same success; another file is not.
    let again = client
        .complete_upload(completion(&sig, "f-1"))
        .await
        .unwrap();
    assert_eq!(again.completed_at, done.completed_at);
    let other = client.complete_upload(completion(&sig, "f-2")).await;
    assert_eq!(
        other.unwrap_err().reason(),
        Some(Reason::UploadAlreadyCompleted)
    );
    let mut oversized = completion(&sig, "f-1");
    oversized.file_size = 1001;
    let refused = client.complete_upload(oversized).await.unwrap_err();
    assert_eq!(refused.reason(), Some(Reason::FileTooLarge));
    assert!(!refused.is_retryable());
    assert_eq!(
        client.verify(&sig).await.unwrap().state,
        SignatureState::Completed as i32
    );

    let got = pull(&client, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let body: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["EventType"], "NewFileUpload");
    assert_eq!(body["FileUploadEvent"]["FileId"], "f-1");
    assert_eq!(
        body["FileUploadEvent"]["MediaBasicInfo"]["SourceInfo"]["SourceContext"],
        "user-9/upload-1"
    );
    assert!(got[0].webhook_id.starts_with("msg_"), "{got:?}");
    // Confirming is idempotent: a retry of it answers 0, and nothing comes back.
    assert_eq!(
        client
            .confirm_events([got[0].handle.as_str()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        client
            .confirm_events(vec![got[0].handle.clone()])
            .await
            .unwrap(),
        0
    );
    assert!(client.pull_events(0, 0).await.unwrap().is_empty());
    // PullEvents' own wait is part of its deadline: 3 s of waiting with the 2 s timeout.
    let started = std::time::Instant::now();
    assert!(client.pull_events(16, 3).await.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_secs(3));
}

/// CompleteUpload's reply is lost (Redis applied the completion, the server never heard):
/// the client's retry, with the same arguments, gets the first call's success, and the app
/// server is told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_completion_is_retried_with_the_same_file() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port).await;
    let store = Arc::new(redis_store(&proxy.url(), "vodsigner:"));
    let server = TestServer::start_on(store, Some(redis), pulling()).await;
    let client = Client::connect(ClientConfig {
        attempts: 8,
        budget: Some(Duration::from_secs(30)),
        ..ClientConfig::new(format!("http://{}", server.addr))
    })
    .unwrap();
    let warm = client
        .issue(IssueSignatureRequest::default())
        .await
        .unwrap()
        .signature;
    client.consume(&warm, None, None).await.unwrap();
    client
        .complete_upload(completion(&warm, "warm"))
        .await
        .unwrap(); // loads the scripts
    let sig = client
        .issue(IssueSignatureRequest::default())
        .await
        .unwrap()
        .signature;
    client.consume(&sig, None, None).await.unwrap();

    proxy.set(Fault::LoseReplies);
    let random = vod_signer::signature::parse(&sig).unwrap().claims.random;
    let record_key = format!("vodsigner:sig:{SECRET_ID}:{random}");
    let redis_port = server.redis.as_ref().unwrap().port;
    let heal = tokio::spawn(async move {
        // Heals once Redis holds the completion (read directly, not through the proxy) and
        // a reply was lost on the way back.
        let applied = || {
            std::process::Command::new("redis-cli")
                .args(["-p", &redis_port.to_string(), "GET", &record_key])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).starts_with("v1|completed|"))
                .unwrap_or(false)
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            proxy.replies_lost(1).await;
            while !applied() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the completion reached Redis while replies were lost");
        proxy.set(Fault::Pass);
        proxy
    });
    let done = client
        .complete_upload(completion(&sig, "f-lost"))
        .await
        .unwrap();
    let _proxy = heal.await.unwrap();
    assert!(done.completed_at > 0 && !done.late);
    assert_eq!(
        client.verify(&sig).await.unwrap().state,
        SignatureState::Completed as i32
    );
    // One notification per upload, however many attempts completed it.
    let got = pull(&client, 3, Duration::from_secs(4)).await;
    let files: Vec<String> = got
        .iter()
        .map(|n| {
            let body: serde_json::Value = serde_json::from_str(&n.body).unwrap();
            body["FileUploadEvent"]["FileId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(sorted, ["f-lost", "warm"], "{got:?}");
}
