//! A subject's signatures through the public gRPC surface: ListSignatures (newest first,
//! pages, state filter, expired ones left out, nothing secret), RevokeSubject (counts, typed
//! refusal afterwards, racing a consume), and the outstanding cap (consume, revoke and expiry
//! free a slot; 40 racers on two replicas sharing one Redis). On the in-memory store, one
//! Redis, and a Redis Cluster.

mod common;

use common::*;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;
use vod_signer::clock::Clock as _;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{
    IssueSignatureRequest, ListSignaturesRequest, ListSignaturesResponse, RevokeSignatureRequest,
    RevokeSubjectRequest, SignatureState, SignatureSummary, UploadPolicy, VerifySignatureRequest,
};
use vod_signer::quota::Charge;
use vod_signer::reason::Reason;
use vod_signer::service::Settings;
use vod_signer::store::{
    Admission, AdmitOutcome, MemoryStore, RecordRef, RecordState, Store, SubjectEntry,
    subject_digest,
};

on_stores!(
    listing_is_newest_first_paged_filtered_and_secret_free,
    revoke_subject_revokes_only_what_is_issued,
    revoke_subject_racing_consume_ends_in_exactly_one,
    outstanding_cap_is_freed_by_consume_revoke_and_expiry,
);

/// The leeway of `Settings::default()`: a signature is expired once the clock is past
/// `expireTime` plus this.
const LEEWAY: i64 = 60;

fn issue_for(subject: &str, context: &str, ttl: u64) -> IssueSignatureRequest {
    IssueSignatureRequest {
        subject: subject.into(),
        ttl_seconds: ttl,
        policy: Some(UploadPolicy {
            source_context: context.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn list(
    subject: &str,
    states: &[SignatureState],
    page_size: u32,
    token: &str,
) -> ListSignaturesRequest {
    ListSignaturesRequest {
        subject: subject.into(),
        states: states.iter().map(|&s| s as i32).collect(),
        page_size,
        page_token: token.into(),
    }
}

async fn listing(
    client: &mut SignatureServiceClient<Channel>,
    req: ListSignaturesRequest,
) -> ListSignaturesResponse {
    client.list_signatures(req).await.unwrap().into_inner()
}

fn contexts(signatures: &[SignatureSummary]) -> Vec<&str> {
    signatures
        .iter()
        .map(|s| s.source_context.as_str())
        .collect()
}

async fn revoke_subject(client: &mut SignatureServiceClient<Channel>, subject: &str) -> u32 {
    client
        .revoke_subject(RevokeSubjectRequest {
            subject: subject.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revoked
}

async fn listing_is_newest_first_paged_filtered_and_secret_free(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let mut signatures = Vec::new();
    let mut randoms = Vec::new();
    for i in 1..=5 {
        let issued = client
            .issue_signature(issue_for("alice", &format!("upload-{i}"), 0))
            .await
            .unwrap()
            .into_inner();
        randoms.push(issued.claims.unwrap().random);
        signatures.push(issued.signature);
        server.clock.advance(1);
    }
    client
        .issue_signature(issue_for("bob", "bob-1", 0))
        .await
        .unwrap();
    // Issued without a subject: in nobody's listing.
    client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap();
    client
        .consume_signature(consume_req(&signatures[1]))
        .await
        .unwrap();
    server.clock.advance(1);
    client
        .revoke_signature(RevokeSignatureRequest {
            signature: signatures[3].clone(),
        })
        .await
        .unwrap();
    let revoked_at = server.clock.now();

    // Default: ISSUED only, newest first.
    let page = listing(&mut client, list("alice", &[], 0, "")).await;
    assert_eq!(
        contexts(&page.signatures),
        ["upload-5", "upload-3", "upload-1"]
    );
    assert!(page.next_page_token.is_empty());
    let newest = &page.signatures[0];
    assert_eq!(newest.secret_id, SECRET_ID);
    assert_eq!(newest.random, randoms[4]);
    assert_eq!(newest.state, SignatureState::Issued as i32);
    assert_eq!(newest.changed_at, newest.issued_at);
    assert_eq!(newest.expire_time, newest.issued_at + 3600);

    // The others, with when they changed.
    let page = listing(
        &mut client,
        list(
            "alice",
            &[SignatureState::Consumed, SignatureState::Revoked],
            0,
            "",
        ),
    )
    .await;
    assert_eq!(contexts(&page.signatures), ["upload-4", "upload-2"]);
    assert_eq!(page.signatures[0].state, SignatureState::Revoked as i32);
    assert_eq!(page.signatures[0].changed_at, revoked_at);
    assert_eq!(page.signatures[1].state, SignatureState::Consumed as i32);

    // Pages of two over all three states.
    let all = [
        SignatureState::Issued,
        SignatureState::Consumed,
        SignatureState::Revoked,
    ];
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = listing(&mut client, list("alice", &all, 2, &token)).await;
        assert!(page.signatures.len() <= 2);
        seen.extend(page.signatures.iter().map(|s| s.source_context.clone()));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["upload-5", "upload-4", "upload-3", "upload-2", "upload-1"]
    );
    assert_eq!(pages, 3);
    // A token of alice's listing is not one of bob's.
    let page = listing(&mut client, list("alice", &all, 2, "")).await;
    assert_eq!(
        refused(
            client
                .list_signatures(list("bob", &all, 2, &page.next_page_token))
                .await
        ),
        Reason::InvalidRequest
    );
    let page = listing(&mut client, list("bob", &[], 0, "")).await;
    assert_eq!(contexts(&page.signatures), ["bob-1"]);

    // Nothing secret: neither the signature nor any part of its tag.
    let page = listing(&mut client, list("alice", &all, 0, "")).await;
    let text = format!("{page:?}");
    for signature in &signatures {
        assert!(!text.contains(&signature[..16]), "{text}");
    }
    use prost::Message as _;
    let bytes = page.encode_to_vec();
    for signature in &signatures {
        let tag = &vod_signer::signature::parse(signature).unwrap().tag;
        assert!(!bytes.windows(8).any(|w| w == &tag[..8]));
    }

    // Expired ones are not listed: a short one expires, the others stay.
    client
        .issue_signature(issue_for("alice", "short", 10))
        .await
        .unwrap();
    let page = listing(&mut client, list("alice", &[], 0, "")).await;
    assert_eq!(contexts(&page.signatures)[0], "short");
    server.clock.advance(10 + LEEWAY + 1);
    let page = listing(&mut client, list("alice", &all, 0, "")).await;
    assert_eq!(
        contexts(&page.signatures),
        ["upload-5", "upload-4", "upload-3", "upload-2", "upload-1"]
    );
    server.clock.advance(3600);
    let page = listing(&mut client, list("alice", &all, 0, "")).await;
    assert!(page.signatures.is_empty(), "{page:?}");

    // Requests out of range.
    for bad in [
        list("", &[], 0, ""),
        list("alice", &[], 1001, ""),
        list("alice", &[SignatureState::Expired], 0, ""),
        list("alice", &[], 0, "not-a-token"),
    ] {
        assert_eq!(
            refused(client.list_signatures(bad).await),
            Reason::InvalidRequest
        );
    }
    let mut bad_state = list("alice", &[], 0, "");
    bad_state.states = vec![42];
    assert_eq!(
        refused(client.list_signatures(bad_state).await),
        Reason::InvalidRequest
    );
}

async fn revoke_subject_revokes_only_what_is_issued(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let mut signatures = Vec::new();
    for i in 0..4 {
        let issued = client
            .issue_signature(issue_for("carol", &format!("c-{i}"), 0))
            .await
            .unwrap()
            .into_inner();
        signatures.push(issued.signature);
    }
    let dave = client
        .issue_signature(issue_for("dave", "d", 0))
        .await
        .unwrap()
        .into_inner()
        .signature;
    client
        .consume_signature(consume_req(&signatures[0]))
        .await
        .unwrap();

    assert_eq!(revoke_subject(&mut client, "carol").await, 3);
    for signature in &signatures[1..] {
        assert_eq!(
            refused(client.consume_signature(consume_req(signature)).await),
            Reason::SignatureRevoked
        );
    }
    // The consumed one stays consumed.
    let state = client
        .verify_signature(VerifySignatureRequest {
            signature: signatures[0].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, SignatureState::Consumed as i32);
    // Nothing left to revoke; nothing ISSUED listed.
    assert_eq!(revoke_subject(&mut client, "carol").await, 0);
    assert!(
        listing(&mut client, list("carol", &[], 0, ""))
            .await
            .signatures
            .is_empty()
    );
    let revoked = listing(
        &mut client,
        list("carol", &[SignatureState::Revoked], 0, ""),
    )
    .await;
    assert_eq!(revoked.signatures.len(), 3);
    // Another subject is untouched; an unknown one has nothing.
    client.consume_signature(consume_req(&dave)).await.unwrap();
    assert_eq!(revoke_subject(&mut client, "nobody").await, 0);
    assert_eq!(
        refused(client.revoke_subject(RevokeSubjectRequest::default()).await),
        Reason::InvalidRequest
    );
}

async fn revoke_subject_racing_consume_ends_in_exactly_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = server.client().await;
    let (mut consumed, mut revoked) = (0, 0);
    for round in 0..30 {
        let subject = format!("race-{round}");
        let signature = client
            .clone()
            .issue_signature(issue_for(&subject, "r", 0))
            .await
            .unwrap()
            .into_inner()
            .signature;
        let (mut a, mut b) = (client.clone(), client.clone());
        let sig = signature.clone();
        let consume = tokio::spawn(async move { a.consume_signature(consume_req(&sig)).await });
        let s = subject.clone();
        let revoke = tokio::spawn(async move { revoke_subject(&mut b, &s).await });
        let (consume, revoke) = (consume.await.unwrap(), revoke.await.unwrap());
        let state = client
            .clone()
            .verify_signature(VerifySignatureRequest { signature })
            .await
            .unwrap()
            .into_inner()
            .state;
        match consume {
            Ok(_) => {
                assert_eq!(revoke, 0, "round {round}: consumed and revoked");
                assert_eq!(state, SignatureState::Consumed as i32);
                consumed += 1;
            }
            Err(status) => {
                assert_eq!(reason_of(&status), Reason::SignatureRevoked);
                assert_eq!(revoke, 1, "round {round}");
                assert_eq!(state, SignatureState::Revoked as i32);
                revoked += 1;
            }
        }
    }
    assert_eq!(consumed + revoked, 30);
}

fn capped(n: u32) -> Settings {
    Settings {
        max_outstanding_per_subject: n,
        ..Settings::default()
    }
}

fn assert_outstanding_refusal(status: &tonic::Status) {
    assert_eq!(reason_of(status), Reason::RateLimited);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["quota"], "outstanding");
    assert!(status.get_details_retry_info().is_none());
    assert!(
        status.message().contains("consume or revoke one first"),
        "{}",
        status.message()
    );
}

async fn outstanding_cap_is_freed_by_consume_revoke_and_expiry(backend: Backend) {
    let server = TestServer::start_with(backend, capped(3)).await;
    let mut client = server.client().await;
    let mut signatures = Vec::new();
    for i in 0..3 {
        let issued = client
            .issue_signature(issue_for("erin", &format!("e-{i}"), 0))
            .await
            .unwrap()
            .into_inner();
        signatures.push(issued.signature);
    }
    let status = client
        .issue_signature(issue_for("erin", "over", 0))
        .await
        .unwrap_err();
    assert_outstanding_refusal(&status);
    // The refused one left nothing behind.
    let page = listing(&mut client, list("erin", &[], 0, "")).await;
    assert_eq!(page.signatures.len(), 3);
    // Others are not affected; neither are issues without a subject.
    client
        .issue_signature(issue_for("frank", "f", 0))
        .await
        .unwrap();
    for _ in 0..5 {
        client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
    }

    // A consume frees a slot.
    client
        .consume_signature(consume_req(&signatures[0]))
        .await
        .unwrap();
    let fourth = client
        .issue_signature(issue_for("erin", "e-3", 0))
        .await
        .unwrap()
        .into_inner()
        .signature;
    assert_outstanding_refusal(
        &client
            .issue_signature(issue_for("erin", "over", 0))
            .await
            .unwrap_err(),
    );
    // So does a revoke.
    client
        .revoke_signature(RevokeSignatureRequest {
            signature: signatures[1].clone(),
        })
        .await
        .unwrap();
    client
        .issue_signature(issue_for("erin", "e-4", 0))
        .await
        .unwrap();
    // And RevokeSubject frees them all.
    assert_eq!(revoke_subject(&mut client, "erin").await, 3);
    let _ = fourth;
    for i in 0..3 {
        client
            .issue_signature(issue_for("erin", &format!("short-{i}"), 10))
            .await
            .unwrap();
    }
    assert_outstanding_refusal(
        &client
            .issue_signature(issue_for("erin", "over", 0))
            .await
            .unwrap_err(),
    );
    // Expiry: once past expireTime plus the leeway, they no longer count.
    server.clock.advance(10 + LEEWAY);
    assert_outstanding_refusal(
        &client
            .issue_signature(issue_for("erin", "over", 0))
            .await
            .unwrap_err(),
    );
    server.clock.advance(1);
    for i in 0..3 {
        client
            .issue_signature(issue_for("erin", &format!("later-{i}"), 0))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_holds_for_40_racers_on_two_replicas_sharing_one_redis() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--max-outstanding-per-subject",
        "5",
    ];
    let a = ServerProcess::start(keys.path(), &args);
    let b = ServerProcess::start(keys.path(), &args);
    let (ca, cb) = (connect(a.addr).await, connect(b.addr).await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        tasks.push(tokio::spawn(async move {
            client.issue_signature(issue_for("mallory", "m", 0)).await
        }));
    }
    let mut ok = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => ok.push(r.into_inner().signature),
            Err(status) => assert_outstanding_refusal(&status),
        }
    }
    assert_eq!(ok.len(), 5);
    // Exactly five records for her, and her index holds exactly those.
    // Her outstanding and listing indexes, and her name (for her uploads' notifications).
    let out = redis.cli(&["KEYS", "vodsigner:sub:*"]).unwrap_or_default();
    assert_eq!(out.lines().count(), 3, "{out}");
    let sig_keys = redis.cli(&["KEYS", "vodsigner:sig:*"]).unwrap_or_default();
    assert_eq!(sig_keys.lines().count(), 5, "{sig_keys}");
    // A consume on one replica frees a slot on the other.
    let (mut ca, mut cb) = (ca, cb);
    ca.consume_signature(consume_req(&ok[0])).await.unwrap();
    cb.issue_signature(issue_for("mallory", "m", 0))
        .await
        .unwrap();
    assert_outstanding_refusal(
        &ca.issue_signature(issue_for("mallory", "m", 0))
            .await
            .unwrap_err(),
    );
}

#[tokio::test]
async fn no_subject_no_index() {
    let server = TestServer::start(Backend::Redis).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        let s = client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap()
            .into_inner()
            .signature;
        client.consume_signature(consume_req(&s)).await.unwrap();
    }
    let redis = server.redis.as_ref().unwrap();
    assert_eq!(
        redis.cli(&["KEYS", "vodsigner:sub:*"]).unwrap_or_default(),
        ""
    );
    // With a subject (and no outstanding cap, so no outstanding index): the listing index and
    // the subject's name, under the subject's hash tag.
    client
        .issue_signature(issue_for("grace", "g", 0))
        .await
        .unwrap();
    let keys = redis.cli(&["KEYS", "vodsigner:sub:*"]).unwrap_or_default();
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("vodsigner:sub:{")),
        "{keys:?}"
    );
}

/// `used_memory` of a Redis, bytes.
fn used_memory(redis: &RedisServer) -> i64 {
    let info = redis.cli(&["INFO", "memory"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Redis memory per issued record, with and without a subject, for several subject counts
/// (BENCHMARKS.md's figures come from `loadgen --floor --subjects`).
/// `cargo test --test subjects -- --ignored --nocapture measure_index_memory`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_index_memory() {
    const N: u64 = 10_000;
    for (label, subjects) in [
        ("no subject", 0u64),
        ("1 000 subjects x 10", 1_000),
        ("10 000 subjects x 1", 10_000),
        ("1 subject x 10 000", 1),
    ] {
        let server = TestServer::start(Backend::Redis).await;
        let mut client = server.client().await;
        let redis = server.redis.as_ref().unwrap();
        let before = used_memory(redis);
        for i in 0..N {
            let subject = if subjects == 0 {
                String::new()
            } else {
                format!("user-{}", i % subjects)
            };
            client
                .issue_signature(IssueSignatureRequest {
                    subject,
                    policy: Some(UploadPolicy {
                        source_context: format!("user-{}/upload-{i}", i % 1000),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let after = used_memory(redis);
        println!(
            "{label}: {} bytes per issued record ({} keys)",
            (after - before) / N as i64,
            redis.cli(&["DBSIZE"]).unwrap()
        );
    }
}

/// RevokeSubject at scale: 10 000 outstanding for one subject are all revoked, in well
/// under the 2 s goal (release build; this debug build gets more room), and Redis logs no
/// command or script over 10 ms (`SLOWLOG`): each record is its own short step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_subject_of_10_000_runs_no_redis_command_over_10_ms() {
    const N: usize = 10_000;
    let server = TestServer::start(Backend::Redis).await;
    let client = server.client().await;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (mut client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < N {
                client
                    .issue_signature(issue_for("ivan", "user-ivan/upload", 0))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let redis = server.redis.as_ref().unwrap();
    redis
        .cli(&["CONFIG", "SET", "slowlog-log-slower-than", "10000"])
        .unwrap();
    redis.cli(&["SLOWLOG", "RESET"]).unwrap();
    let mut client = client;
    let started = std::time::Instant::now();
    assert_eq!(revoke_subject(&mut client, "ivan").await, N as u32);
    let took = started.elapsed();
    println!("RevokeSubject of {N}: {took:?}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    assert_eq!(
        redis.cli(&["SLOWLOG", "LEN"]).unwrap(),
        "0",
        "{}",
        redis
            .cli(&["SLOWLOG", "GET", "20"])
            .unwrap_or_default()
            .replace('\n', " ")
    );
    assert!(
        listing(&mut client, list("ivan", &[], 0, ""))
            .await
            .signatures
            .is_empty()
    );
}

/// The lazy upkeep never leaves an index key without an expiry: the admission extends the
/// keys' expiry only now and then, so a key it recreates (the outstanding index, emptied by
/// the consume of its last entry) must get one at once; the name outlives the listing by
/// the completion window.
#[tokio::test]
async fn every_index_key_expires_also_when_recreated() {
    let server = TestServer::start_with(Backend::Redis, capped(3)).await;
    let mut client = server.client().await;
    let redis = server.redis.as_ref().unwrap();
    let ttls = || -> Vec<(String, i64)> {
        let keys = redis.cli(&["KEYS", "vodsigner:sub:*"]).unwrap_or_default();
        keys.lines()
            .map(|k| {
                let ttl = redis.cli(&["TTL", k]).unwrap().parse().unwrap();
                (k.to_owned(), ttl)
            })
            .collect()
    };
    let first = client
        .issue_signature(issue_for("kate", "k-1", 0))
        .await
        .unwrap()
        .into_inner()
        .signature;
    assert_eq!(ttls().len(), 3, "{:?}", ttls());
    // Her only outstanding entry released: the outstanding index is gone ...
    client.consume_signature(consume_req(&first)).await.unwrap();
    assert_eq!(ttls().len(), 2, "{:?}", ttls());
    // ... and the next admission recreates it with an expiry.
    client
        .issue_signature(issue_for("kate", "k-2", 0))
        .await
        .unwrap();
    let ttls = ttls();
    assert_eq!(ttls.len(), 3, "{ttls:?}");
    for (key, ttl) in &ttls {
        // At least the record's TTL (default 3600 + leeway), at most that plus the room and,
        // for the name, the completion window's keep.
        assert!(*ttl >= 3600, "{key}: {ttl}");
        if key.ends_with(":name") {
            assert!(*ttl > 3660 + 600, "{key}: {ttl}");
        }
    }
}

/// The rolling upgrade of the record form (docs/redis.md, "Upgrading the record form"): a
/// replica with `--text-subject-records` writes records issued for a subject in the text
/// form that older versions read, one without it in the compact form; each lists, consumes
/// and revokes what the other issued, also once `RevokeSubject` has left a compact record
/// with only its fingerprint's first 15 digits.
#[tokio::test]
async fn subject_records_in_either_form_serve_on_every_replica() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let url = redis.url();
    let text = ServerProcess::start(
        keys.path(),
        &["--redis-url", url.as_str(), "--text-subject-records"],
    );
    let compact = ServerProcess::start(keys.path(), &["--redis-url", url.as_str()]);
    let (mut t, mut c) = (connect(text.addr).await, connect(compact.addr).await);
    let mut from_text = Vec::new();
    let mut from_compact = Vec::new();
    for i in 0..3 {
        for (client, issued) in [(&mut t, &mut from_text), (&mut c, &mut from_compact)] {
            let signature = client
                .issue_signature(issue_for("erin", &format!("e-{i}"), 0))
                .await
                .unwrap()
                .into_inner()
                .signature;
            issued.push(signature);
        }
    }
    // As stored: three of each form.
    let sig_keys = redis.cli(&["KEYS", "vodsigner:sig:*"]).unwrap_or_default();
    let mut values = Vec::new();
    for key in sig_keys.lines() {
        values.push(redis.cli(&["GET", key]).unwrap());
    }
    let is_compact = |v: &str| {
        v.split_once(':').is_some_and(|(fp, digest)| {
            fp.len() == 15
                && digest.len() == 24
                && (fp.chars().chain(digest.chars())).all(|ch| ch.is_ascii_hexdigit())
        })
    };
    assert_eq!(values.len(), 6, "{values:?}");
    assert_eq!(
        values.iter().filter(|v| is_compact(v)).count(),
        3,
        "{values:?}"
    );
    assert_eq!(
        values
            .iter()
            .filter(|v| v.starts_with("v1|issued|"))
            .count(),
        3,
        "{values:?}"
    );
    // Each replica lists all six.
    for client in [&mut t, &mut c] {
        let page = listing(client, list("erin", &[], 0, "")).await;
        assert_eq!(page.signatures.len(), 6, "{page:?}");
    }
    // Each consumes one the other issued; the replay is refused on both.
    c.consume_signature(consume_req(&from_text[0]))
        .await
        .unwrap();
    t.consume_signature(consume_req(&from_compact[0]))
        .await
        .unwrap();
    for signature in [&from_text[0], &from_compact[0]] {
        for client in [&mut t, &mut c] {
            assert_eq!(
                refused(client.consume_signature(consume_req(signature)).await),
                Reason::SignatureAlreadyUsed
            );
        }
    }
    // RevokeSubject on the text replica takes both forms; both replicas then refuse them as
    // revoked (a compact one now holds 15 digits of its fingerprint) and list them so.
    assert_eq!(revoke_subject(&mut t, "erin").await, 4);
    for signature in from_text[1..].iter().chain(&from_compact[1..]) {
        for client in [&mut t, &mut c] {
            assert_eq!(
                refused(client.consume_signature(consume_req(signature)).await),
                Reason::SignatureRevoked
            );
        }
    }
    for client in [&mut t, &mut c] {
        let revoked = listing(client, list("erin", &[SignatureState::Revoked], 0, "")).await;
        assert_eq!(revoked.signatures.len(), 4, "{revoked:?}");
        let consumed = listing(client, list("erin", &[SignatureState::Consumed], 0, "")).await;
        assert_eq!(consumed.signatures.len(), 2, "{consumed:?}");
    }
}

/// An admission of the subject with digest `digest`, cap 1, for `entry` signed with
/// `fingerprint`, charging `quotas`.
fn admission<'a>(
    digest: &'a str,
    entry: &'a SubjectEntry,
    fingerprint: &'a str,
    quotas: &'a [Charge],
) -> Admission<'a> {
    Admission {
        subject: digest,
        name: "someone",
        entry,
        fingerprint,
        cap: 1,
        expired_before: entry.issued_at - LEEWAY,
        ttl_seconds: 3600 + LEEWAY as u64,
        keep_seconds: 0,
        issued_before: 0,
        quotas,
        tidy: false,
    }
}

/// One charge of `interval_ms` with `tolerance_ms` of burst on the subject with `digest`.
fn subject_quota(digest: &str, interval_ms: u64, tolerance_ms: u64) -> Vec<Charge> {
    vec![Charge {
        key: format!("quota:{{{digest}}}:subject"),
        interval_ms,
        tolerance_ms,
        name: "subject",
    }]
}

/// An admission whose nonce another record holds (a collision: `IssueSignature` then picks
/// another nonce) writes, charges and indexes nothing, and leaves the holder's own entries;
/// discarding the record it did not write leaves the holder's record.
/// Through the store: a 32-bit nonce cannot be made to collide through the API.
async fn a_taken_nonce_writes_charges_and_indexes_nothing(store: impl Store) {
    let now = vod_signer::clock::SystemClock.now();
    let entry = |random: u32| SubjectEntry {
        secret_id: "AKIDtaken".into(),
        random,
        issued_at: now,
        expire_time: now + 3600,
        source_context: "ctx".into(),
    };
    let (a, b, c) = (
        "aaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbb",
        "cccccccccccccccccccccccc",
    );

    // A record issued without a subject holds nonce 9: another signature's admission with
    // it is `Taken`, and the subject's quota (one a minute, no burst) and cap (one) still
    // admit the next signature.
    let piotr = subject_digest("piotr");
    let one_a_minute = subject_quota(&piotr, 60_000, 0);
    let (held, next) = (entry(9), entry(10));
    let holder = RecordRef {
        key: held.key(),
        fingerprint: a,
        issued_at: now,
    };
    assert!(store.insert_issued(holder, now, 3660, "").await.unwrap());
    let taken = store.admit(admission(&piotr, &held, b, &one_a_minute));
    assert_eq!(taken.await.unwrap(), AdmitOutcome::Taken);
    assert_eq!(store.status(holder).await.unwrap(), RecordState::Issued);
    // Discarding the taken signature's record (as a failed issue does) leaves the holder's.
    let never_written = RecordRef {
        fingerprint: b,
        ..holder
    };
    store.discard(never_written, &piotr).await.unwrap();
    assert_eq!(store.status(holder).await.unwrap(), RecordState::Issued);
    let admitted = store.admit(admission(&piotr, &next, c, &one_a_minute));
    assert_eq!(admitted.await.unwrap(), AdmitOutcome::Admitted);

    // The holder was issued for the same subject: its entries stay (the listing shows it,
    // the cap of one still counts it), and its quota charge is the only one left (one a
    // minute with a minute of burst has room for one more: the taken one's was undone).
    let olga = subject_digest("olga");
    let burst_of_two = subject_quota(&olga, 60_000, 60_000);
    let (mine, other) = (entry(7), entry(8));
    let admitted = store.admit(admission(&olga, &mine, a, &burst_of_two));
    assert_eq!(admitted.await.unwrap(), AdmitOutcome::Admitted);
    let taken = store.admit(admission(&olga, &mine, b, &burst_of_two));
    assert_eq!(taken.await.unwrap(), AdmitOutcome::Taken);
    let listed = store
        .list_subject(&olga, None, 10, now - LEEWAY, &["AKIDtaken"])
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].entry.random, listed[0].state),
        (7, RecordState::Issued)
    );
    let capped = store.admit(admission(&olga, &other, c, &burst_of_two));
    assert_eq!(capped.await.unwrap(), AdmitOutcome::Capped);
}

#[tokio::test]
async fn a_taken_nonce_writes_charges_and_indexes_nothing_in_memory() {
    a_taken_nonce_writes_charges_and_indexes_nothing(MemoryStore::new()).await;
}

#[tokio::test]
async fn a_taken_nonce_writes_charges_and_indexes_nothing_on_redis() {
    let redis = RedisServer::start();
    a_taken_nonce_writes_charges_and_indexes_nothing(redis_store(&redis.url(), "vodsigner:")).await;
}
