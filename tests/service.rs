//! The semantic suite of SignatureService (SPEC sections 3 and 4), through gRPC, run against
//! every store: the embedded in-memory one, a real `redis-server`, and a 3-master Redis
//! Cluster, each started per test.

mod common;

use common::*;
use std::sync::Arc;
use vod_signer::proto::{
    ConsumeSignatureRequest, IssueSignatureRequest, RevokeSignatureRequest, SignatureState,
    UploadPolicy, VerifySignatureRequest,
};
use vod_signer::reason::Reason;

use vod_signer::service::Settings;
use vod_signer::signature;

on_stores!(
    test: tokio::test;
    issue_verify_consume_once,
    issue_records_before_answering,
    revoke_states,
    verify_reports_every_state,
    clock_refusals,
    authentication_refusals,
    file_size_limit,
    request_validation,
    idempotent_consume_retry,
    same_nonce_other_signature_is_not_issued,
    issue_with_non_active_key,
);

fn issue_req(policy: UploadPolicy) -> IssueSignatureRequest {
    IssueSignatureRequest {
        policy: Some(policy),
        subject: "user-42".into(),
        ..Default::default()
    }
}

fn verify_req(signature: &str) -> VerifySignatureRequest {
    VerifySignatureRequest {
        signature: signature.to_owned(),
    }
}

fn revoke_req(signature: &str) -> RevokeSignatureRequest {
    RevokeSignatureRequest {
        signature: signature.to_owned(),
    }
}

async fn issue_one(server: &TestServer) -> (String, vod_signer::proto::Claims) {
    let reply = server
        .client()
        .await
        .issue_signature(issue_req(UploadPolicy::default()))
        .await
        .unwrap();
    let reply = reply.into_inner();
    (reply.signature, reply.claims.unwrap())
}

async fn issue_verify_consume_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let policy = UploadPolicy {
        procedure: "QCVB_SimpleProcessFile".into(),
        source_context: "user-42/上传 #1".into(),
        class_id: Some(7),
        ..Default::default()
    };
    let before = server.now();
    let reply = client
        .issue_signature(issue_req(policy.clone()))
        .await
        .unwrap()
        .into_inner();
    let claims = reply.claims.unwrap();
    assert_eq!(claims.secret_id, SECRET_ID);
    assert!(claims.one_time_valid);
    // The service's clock stands still: the signature carries exactly its time.
    assert_eq!(claims.current_time_stamp, before);
    assert_eq!(claims.expire_time - claims.current_time_stamp, 3600);
    assert_eq!(claims.policy.as_ref().unwrap(), &policy);
    assert!(
        !claims.original.contains("user-42&"),
        "subject must never be in the signature"
    );
    assert!(
        claims
            .original
            .contains("sourceContext=user-42%2F%E4%B8%8A%E4%BC%A0%20%231")
    );
    // The signature is the Tencent format, made with the test key.
    let parsed = signature::parse(&reply.signature).unwrap();
    parsed
        .verify(&signature::SecretKey::new(SECRET_KEY.as_bytes()))
        .unwrap();
    assert_eq!(parsed.claims.original, claims.original);

    let state = client
        .verify_signature(verify_req(&reply.signature))
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, SignatureState::Issued as i32);

    let consumed = client
        .consume_signature(consume_req(&reply.signature))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consumed.claims.unwrap().random, claims.random);
    assert_eq!(consumed.consumed_at, before);

    let again = client
        .consume_signature(consume_req(&reply.signature))
        .await;
    let status = again.as_ref().unwrap_err();
    assert_eq!(reason_of(status), Reason::SignatureAlreadyUsed);
    assert!(
        status.message().contains("consumed at 20"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&reply.signature));
}

async fn issue_records_before_answering(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (sig, claims) = issue_one(&server).await;
    // The answer arrived, so the record must already be there: verify on a new connection sees it.
    let state = server
        .client()
        .await
        .verify_signature(verify_req(&sig))
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, SignatureState::Issued as i32);
    if let Some(redis) = &server.redis {
        // Issued for a subject: the compact subject form, 15 digits of the fingerprint and
        // the digest naming the subject's index, short enough for Redis' embedded strings.
        let key = format!("vodsigner:sig:{SECRET_ID}:{}", claims.random);
        let value = redis.cli(&["GET", &key]).unwrap();
        let (prefix, digest) = value.split_once(':').unwrap_or_default();
        assert_eq!((prefix.len(), digest.len()), (15, 24), "{value}");
        assert!(value.len() <= 44, "{value}");
        assert_eq!(redis.cli(&["OBJECT", "ENCODING", &key]).unwrap(), "embstr");

        // Without a subject, the compact form: the fingerprint as an integer, kept in Redis'
        // object header.
        let reply = server
            .client()
            .await
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap()
            .into_inner();
        let (sig, claims) = (reply.signature, reply.claims.unwrap());
        let key = format!("vodsigner:sig:{SECRET_ID}:{}", claims.random);
        let value = redis.cli(&["GET", &key]).unwrap();
        assert!(value.parse::<u64>().is_ok(), "{value}");
        assert_eq!(redis.cli(&["OBJECT", "ENCODING", &key]).unwrap(), "int");
        let ttl: i64 = redis.cli(&["TTL", &key]).unwrap().parse().unwrap();
        // expireTime - now + leeway = 3600 + 60.
        assert!((3600..=3660).contains(&ttl), "record TTL {ttl}");

        // A record in the text form of earlier versions (still in Redis after an upgrade) is
        // consumed once, like any other. (Its fingerprint, from the signature's tag.)
        let parsed = vod_signer::signature::parse(&sig).unwrap();
        let fingerprint = vod_signer::signature::fingerprint(&parsed.tag);
        let ts = claims.current_time_stamp;
        let text = format!("v1|issued|{fingerprint}|{ts}|{ts}|");
        assert_eq!(redis.cli(&["SET", &key, &text, "KEEPTTL"]).unwrap(), "OK");
        let mut client = server.client().await;
        client.verify_signature(verify_req(&sig)).await.unwrap();
        client.consume_signature(consume_req(&sig)).await.unwrap();
        assert_eq!(
            refused(client.consume_signature(consume_req(&sig)).await),
            Reason::SignatureAlreadyUsed
        );
        let value = redis.cli(&["GET", &key]).unwrap();
        assert!(
            value.starts_with(&format!("v1|consumed|{fingerprint}|{ts}|")),
            "{value}"
        );
    }
}

async fn revoke_states(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let (sig, _) = issue_one(&server).await;
    let prev = client
        .revoke_signature(revoke_req(&sig))
        .await
        .unwrap()
        .into_inner()
        .previous_state;
    assert_eq!(prev, SignatureState::Issued as i32);
    let prev = client
        .revoke_signature(revoke_req(&sig))
        .await
        .unwrap()
        .into_inner()
        .previous_state;
    assert_eq!(prev, SignatureState::Revoked as i32);
    assert_eq!(
        refused(client.consume_signature(consume_req(&sig)).await),
        Reason::SignatureRevoked
    );

    let (used, _) = issue_one(&server).await;
    client.consume_signature(consume_req(&used)).await.unwrap();
    let prev = client
        .revoke_signature(revoke_req(&used))
        .await
        .unwrap()
        .into_inner()
        .previous_state;
    assert_eq!(prev, SignatureState::Consumed as i32);
    assert_eq!(
        refused(client.consume_signature(consume_req(&used)).await),
        Reason::SignatureAlreadyUsed
    );

    let never = forge(
        SECRET_ID,
        SECRET_KEY,
        server.now(),
        server.now() + 60,
        12345,
        &Default::default(),
    );
    let prev = client
        .revoke_signature(revoke_req(&never))
        .await
        .unwrap()
        .into_inner()
        .previous_state;
    assert_eq!(prev, SignatureState::NotIssued as i32);
}

async fn verify_reports_every_state(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let state = |r: Result<
        tonic::Response<vod_signer::proto::VerifySignatureResponse>,
        tonic::Status,
    >| { r.unwrap().into_inner().state };
    let (consumed, _) = issue_one(&server).await;
    client
        .consume_signature(consume_req(&consumed))
        .await
        .unwrap();
    assert_eq!(
        state(client.verify_signature(verify_req(&consumed)).await),
        SignatureState::Consumed as i32
    );

    let (revoked, _) = issue_one(&server).await;
    client.revoke_signature(revoke_req(&revoked)).await.unwrap();
    assert_eq!(
        state(client.verify_signature(verify_req(&revoked)).await),
        SignatureState::Revoked as i32
    );

    let expired = forge(
        SECRET_ID,
        SECRET_KEY,
        server.now() - 7200,
        server.now() - 3600,
        1,
        &Default::default(),
    );
    assert_eq!(
        state(client.verify_signature(verify_req(&expired)).await),
        SignatureState::Expired as i32
    );

    let never = forge(
        SECRET_ID,
        SECRET_KEY,
        server.now(),
        server.now() + 600,
        2,
        &Default::default(),
    );
    let reply = client
        .verify_signature(verify_req(&never))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.state, SignatureState::NotIssued as i32);
    assert_eq!(reply.claims.unwrap().random, 2);
    // Verify changed nothing: the signature that was issued is still usable.
    let (fresh, _) = issue_one(&server).await;
    client.verify_signature(verify_req(&fresh)).await.unwrap();
    client.verify_signature(verify_req(&fresh)).await.unwrap();
    client.consume_signature(consume_req(&fresh)).await.unwrap();
}

async fn clock_refusals(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    // Past expireTime + leeway (60 s).
    let expired = forge(
        SECRET_ID,
        SECRET_KEY,
        server.now() - 3600,
        server.now() - 61,
        3,
        &Default::default(),
    );
    assert_eq!(
        refused(client.consume_signature(consume_req(&expired)).await),
        Reason::SignatureExpired
    );
    let prev = client
        .revoke_signature(revoke_req(&expired))
        .await
        .unwrap()
        .into_inner()
        .previous_state;
    assert_eq!(prev, SignatureState::Expired as i32);
    // Within the leeway it is not expired yet (and was never issued).
    let grace = forge(
        SECRET_ID,
        SECRET_KEY,
        server.now() - 3600,
        server.now() - 30,
        4,
        &Default::default(),
    );
    assert_eq!(
        refused(client.consume_signature(consume_req(&grace)).await),
        Reason::SignatureNotIssued
    );
    // currentTimeStamp past now + leeway.
    let future = forge(
        SECRET_ID,
        SECRET_KEY,
        server.now() + 600,
        server.now() + 3600,
        5,
        &Default::default(),
    );
    assert_eq!(
        refused(client.consume_signature(consume_req(&future)).await),
        Reason::SignatureNotYetValid
    );
    assert_eq!(
        refused(client.verify_signature(verify_req(&future)).await),
        Reason::SignatureNotYetValid
    );
}

async fn authentication_refusals(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let (sig, _) = issue_one(&server).await;
    for bad in ["", "not base64!", "AAAA", &sig[..sig.len() - 8]] {
        assert_eq!(
            refused(client.consume_signature(consume_req(bad)).await),
            Reason::SignatureMalformed,
            "{bad}"
        );
        assert_eq!(
            refused(client.verify_signature(verify_req(bad)).await),
            Reason::SignatureMalformed,
            "{bad}"
        );
        assert_eq!(
            refused(client.revoke_signature(revoke_req(bad)).await),
            Reason::SignatureMalformed,
            "{bad}"
        );
    }
    let unknown = forge(
        "AKIDnobody",
        SECRET_KEY,
        server.now(),
        server.now() + 60,
        6,
        &Default::default(),
    );
    assert_eq!(
        refused(client.consume_signature(consume_req(&unknown)).await),
        Reason::UnknownSecretId
    );
    assert_eq!(
        refused(client.verify_signature(verify_req(&unknown)).await),
        Reason::UnknownSecretId
    );
    // Right SecretId, wrong key: a forgery.
    let forged = forge(
        SECRET_ID,
        "guessed-key",
        server.now(),
        server.now() + 60,
        7,
        &Default::default(),
    );
    assert_eq!(
        refused(client.consume_signature(consume_req(&forged)).await),
        Reason::SignatureMismatch
    );
    assert_eq!(
        refused(client.verify_signature(verify_req(&forged)).await),
        Reason::SignatureMismatch
    );
    assert_eq!(
        refused(client.revoke_signature(revoke_req(&forged)).await),
        Reason::SignatureMismatch
    );
    // An issued signature with its policy changed is a forgery too.
    let parsed = signature::parse(&sig).unwrap();
    let tampered_original = format!("{}&maxFileSize=999999999999", parsed.claims.original);
    let mut raw = parsed.tag.to_vec();
    raw.extend_from_slice(tampered_original.as_bytes());
    use base64::Engine as _;
    let tampered = base64::engine::general_purpose::STANDARD.encode(raw);
    assert_eq!(
        refused(client.consume_signature(consume_req(&tampered)).await),
        Reason::SignatureMismatch
    );
    // None of this used the real signature up.
    client.consume_signature(consume_req(&sig)).await.unwrap();
}

async fn file_size_limit(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let policy = UploadPolicy {
        max_file_size: Some(1000),
        ..Default::default()
    };
    let sig = client
        .issue_signature(issue_req(policy))
        .await
        .unwrap()
        .into_inner()
        .signature;
    let with_size = |size: Option<u64>| ConsumeSignatureRequest {
        signature: sig.clone(),
        file_size: size,
        ..Default::default()
    };
    assert_eq!(
        refused(client.consume_signature(with_size(Some(1001))).await),
        Reason::FileTooLarge
    );
    assert_eq!(
        refused(client.consume_signature(with_size(None)).await),
        Reason::InvalidRequest
    );
    // Both refusals left it unused.
    let state = client
        .verify_signature(verify_req(&sig))
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, SignatureState::Issued as i32);
    client
        .consume_signature(with_size(Some(1000)))
        .await
        .unwrap();
}

async fn request_validation(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Settings {
            max_ttl: 86_400,
            ..Settings::default()
        },
    )
    .await;
    let mut client = server.client().await;
    let too_long = IssueSignatureRequest {
        ttl_seconds: 86_401,
        ..Default::default()
    };
    let status = client.issue_signature(too_long).await.unwrap_err();
    assert_eq!(reason_of(&status), Reason::InvalidRequest);
    assert!(
        status.message().contains("ttl_seconds"),
        "{}",
        status.message()
    );
    let ok = IssueSignatureRequest {
        ttl_seconds: 86_400,
        ..Default::default()
    };
    let claims = client
        .issue_signature(ok)
        .await
        .unwrap()
        .into_inner()
        .claims
        .unwrap();
    assert_eq!(claims.expire_time - claims.current_time_stamp, 86_400);

    let bad_policies = [
        UploadPolicy {
            procedure: "p".into(),
            task_notify_mode: "Sometimes".into(),
            ..Default::default()
        },
        UploadPolicy {
            task_notify_mode: "Finish".into(),
            ..Default::default()
        },
        UploadPolicy {
            procedure: "p".into(),
            task_priority: Some(11),
            ..Default::default()
        },
        UploadPolicy {
            task_priority: Some(1),
            ..Default::default()
        },
        UploadPolicy {
            source_context: "x".repeat(251),
            ..Default::default()
        },
        UploadPolicy {
            session_context: "x".repeat(1001),
            ..Default::default()
        },
    ];
    for policy in bad_policies {
        let r = client.issue_signature(issue_req(policy.clone())).await;
        assert_eq!(refused(r), Reason::InvalidRequest, "{policy:?}");
    }
    let edge = UploadPolicy {
        procedure: "p".into(),
        task_priority: Some(-10),
        task_notify_mode: "None".into(),
        source_context: "x".repeat(250),
        session_context: "y".repeat(1000),
        ..Default::default()
    };
    client.issue_signature(issue_req(edge)).await.unwrap();
    let unknown = IssueSignatureRequest {
        secret_id: "AKIDnobody".into(),
        ..Default::default()
    };
    assert_eq!(
        refused(client.issue_signature(unknown).await),
        Reason::UnknownSecretId
    );
    let long_subject = IssueSignatureRequest {
        subject: "s".repeat(257),
        ..Default::default()
    };
    assert_eq!(
        refused(client.issue_signature(long_subject).await),
        Reason::InvalidRequest
    );
}

async fn idempotent_consume_retry(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let (sig, _) = issue_one(&server).await;
    let with_key = |key: &str| ConsumeSignatureRequest {
        signature: sig.clone(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    };
    let first = client
        .consume_signature(with_key("upload-7f3a"))
        .await
        .unwrap()
        .into_inner();
    // Later: a repeat that consumed anew would carry the new time.
    server.clock.advance(10);
    let retry = client
        .consume_signature(with_key("upload-7f3a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retry.consumed_at, first.consumed_at,
        "a retry gets the first call's success"
    );
    assert_eq!(
        refused(client.consume_signature(with_key("someone-else")).await),
        Reason::SignatureAlreadyUsed
    );
    assert_eq!(
        refused(client.consume_signature(with_key("")).await),
        Reason::SignatureAlreadyUsed
    );
    // Without a key at the first consume, no retry can claim it.
    let (plain, _) = issue_one(&server).await;
    client.consume_signature(consume_req(&plain)).await.unwrap();
    assert_eq!(
        refused(client.consume_signature(consume_req(&plain)).await),
        Reason::SignatureAlreadyUsed
    );
    let too_long = ConsumeSignatureRequest {
        signature: plain,
        idempotency_key: "k".repeat(257),
        ..Default::default()
    };
    assert_eq!(
        refused(client.consume_signature(too_long).await),
        Reason::InvalidRequest
    );
}

/// 64 consumes of one signature at once, released together by a barrier, on separate
/// connections to `servers` (two replicas sharing one store where there is one), on a
/// multi-thread runtime: they really run side by side, and exactly one wins.
async fn concurrent_consumes_have_one_winner(servers: &[&TestServer]) {
    for _round in 0..3 {
        let (sig, _) = issue_one(servers[0]).await;
        let start = Arc::new(tokio::sync::Barrier::new(64));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let mut client = servers[i % servers.len()].client().await;
            let (sig, start) = (sig.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
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
        assert_eq!(wins, 1, "exactly one of 64 racing consumes wins");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_consumes_have_one_winner_in_memory() {
    let server = TestServer::start(Backend::Memory).await;
    concurrent_consumes_have_one_winner(&[&server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_consumes_on_two_replicas_have_one_winner_redis() {
    let redis = RedisServer::start();
    let store = || {
        Arc::new(redis_store_within(
            &redis.url(),
            "vodsigner:",
            SEMANTIC_STORE_TIMEOUT,
        ))
    };
    let one = TestServer::start_on(store(), None, Settings::default()).await;
    let two = TestServer::start_on(store(), None, Settings::default()).await;
    concurrent_consumes_have_one_winner(&[&one, &two]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_consumes_on_two_replicas_have_one_winner_cluster() {
    let cluster = tokio::task::spawn_blocking(|| common::topology::RedisCluster::start(3, false))
        .await
        .unwrap();
    let store = || {
        Arc::new(redis_store_within(
            &cluster.url(),
            "vodsigner:",
            SEMANTIC_STORE_TIMEOUT,
        ))
    };
    let one = TestServer::start_on(store(), None, Settings::default()).await;
    let two = TestServer::start_on(store(), None, Settings::default()).await;
    concurrent_consumes_have_one_winner(&[&one, &two]).await;
}

async fn same_nonce_other_signature_is_not_issued(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let (sig, claims) = issue_one(&server).await;
    // Authentic (made with the real key) and with the same nonce, but not the one issued.
    let twin_policy = signature::UploadPolicy {
        class_id: Some(1),
        ..Default::default()
    };
    let twin = forge(
        SECRET_ID,
        SECRET_KEY,
        claims.current_time_stamp,
        claims.expire_time,
        claims.random,
        &twin_policy,
    );
    assert_eq!(
        refused(client.consume_signature(consume_req(&twin)).await),
        Reason::SignatureNotIssued
    );
    let prev = client
        .revoke_signature(revoke_req(&twin))
        .await
        .unwrap()
        .into_inner()
        .previous_state;
    assert_eq!(prev, SignatureState::NotIssued as i32);
    client.consume_signature(consume_req(&sig)).await.unwrap();
}

async fn issue_with_non_active_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let req = IssueSignatureRequest {
        secret_id: OTHER_ID.into(),
        ..Default::default()
    };
    let reply = client.issue_signature(req).await.unwrap().into_inner();
    signature::parse(&reply.signature)
        .unwrap()
        .verify(&signature::SecretKey::new(OTHER_KEY.as_bytes()))
        .unwrap();
    client
        .consume_signature(consume_req(&reply.signature))
        .await
        .unwrap();
}
