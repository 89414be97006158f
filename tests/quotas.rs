//! Issuance quotas per subject and per SecretId, on the in-memory store and on Redis: exact
//! counts, rolling windows, racing issuers, two replicas sharing one quota, Redis down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic_types::StatusExt as _;
use vod_signer::proto::{IssueSignatureRequest, RevokeSignatureRequest};
use vod_signer::quota::{Quota, Scope};
use vod_signer::reason::Reason;
use vod_signer::service::Settings;

on_stores!(
    stores: [memory Memory, redis Redis];
    exact_count_at_the_limit,
    the_window_rolls_over,
    subject_is_required,
    per_secret_id_and_burst_quotas,
    racing_issuers_never_exceed_the_quota,
);

fn with_quotas(quotas: &[(Scope, &'static str, &str)]) -> Settings {
    Settings {
        quotas: quotas
            .iter()
            .map(|(scope, name, q)| Quota::parse(*scope, name, q).unwrap())
            .collect(),
        ..Settings::default()
    }
}

fn for_subject(subject: &str) -> IssueSignatureRequest {
    IssueSignatureRequest {
        subject: subject.into(),
        ..Default::default()
    }
}

async fn exact_count_at_the_limit(backend: Backend) {
    let server =
        TestServer::start_with(backend, with_quotas(&[(Scope::Subject, "subject", "5/1h")])).await;
    let mut client = server.client().await;
    let mut issued = Vec::new();
    for _ in 0..5 {
        issued.push(
            client
                .issue_signature(for_subject("alice"))
                .await
                .unwrap()
                .into_inner()
                .signature,
        );
    }
    let status = client
        .issue_signature(for_subject("alice"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), Reason::RateLimited);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("quota").map(String::as_str),
        Some("subject")
    );
    let wait_ms: u64 = info.metadata["retry_after_ms"].parse().unwrap();
    assert!(
        (700_000..=720_000).contains(&wait_ms),
        "one more every 12 min: {wait_ms}"
    );
    assert!(
        status
            .get_details_retry_info()
            .unwrap()
            .retry_delay
            .is_some()
    );
    // Another subject has its own quota.
    client.issue_signature(for_subject("bob")).await.unwrap();
    // The quota is on issuing: revoking what was issued gives nothing back.
    for signature in issued {
        client
            .revoke_signature(RevokeSignatureRequest { signature })
            .await
            .unwrap();
    }
    assert_eq!(
        refused(client.issue_signature(for_subject("alice")).await),
        Reason::RateLimited
    );
}

async fn the_window_rolls_over(backend: Backend) {
    // 3 per 3 s: one more every second (the interval), a burst of 3 (2 s of tolerance).
    const INTERVAL: Duration = Duration::from_secs(1);
    const TOLERANCE: Duration = Duration::from_secs(2);
    let server =
        TestServer::start_with(backend, with_quotas(&[(Scope::Subject, "subject", "3/3s")])).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        client.issue_signature(for_subject("carol")).await.unwrap();
    }
    let asked = Instant::now();
    let status = client
        .issue_signature(for_subject("carol"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), Reason::RateLimited);
    let wait = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(wait <= INTERVAL, "{wait:?}");
    // Polled, not slept: refused until the delay the refusal named, allowed from then on.
    let deadline = asked + wait + SEMANTIC_STORE_TIMEOUT;
    let allowed_at = loop {
        match client.issue_signature(for_subject("carol")).await {
            Ok(_) => break Instant::now(),
            Err(status) => assert_eq!(reason_of(&status), Reason::RateLimited),
        }
        assert!(Instant::now() < deadline, "still refused after {wait:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The quota's clock counts whole milliseconds: a few of them of slack.
    assert!(
        allowed_at + Duration::from_millis(5) >= asked + wait,
        "allowed {:?} after the refusal, before its retry delay {wait:?}",
        allowed_at - asked
    );
    let status = client
        .issue_signature(for_subject("carol"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), Reason::RateLimited);
    let wait = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    // A whole burst's worth of silence brings the whole burst back. This sleep is the
    // silence under test (the quota runs on the store's clock, which a test cannot move).
    tokio::time::sleep(wait + TOLERANCE + Duration::from_millis(5)).await;
    for _ in 0..3 {
        client.issue_signature(for_subject("carol")).await.unwrap();
    }
}

async fn subject_is_required(backend: Backend) {
    let server =
        TestServer::start_with(backend, with_quotas(&[(Scope::Subject, "subject", "5/1h")])).await;
    let mut client = server.client().await;
    let status = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), Reason::InvalidRequest);
    assert!(status.message().contains("subject"), "{}", status.message());

    let lenient = Settings {
        allow_missing_subject: true,
        ..with_quotas(&[(Scope::Subject, "subject", "1/1h")])
    };
    let server = TestServer::start_with(backend, lenient).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
    }
}

async fn per_secret_id_and_burst_quotas(backend: Backend) {
    let quotas = [
        (Scope::Subject, "subject", "100/1h"),
        (Scope::Subject, "subject-burst", "2/1m"),
        (Scope::SecretId, "secret-id", "5/1h"),
    ];
    let server = TestServer::start_with(backend, with_quotas(&quotas)).await;
    let mut client = server.client().await;
    client.issue_signature(for_subject("dave")).await.unwrap();
    client.issue_signature(for_subject("dave")).await.unwrap();
    let status = client
        .issue_signature(for_subject("dave"))
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["quota"],
        "subject-burst"
    );
    for subject in ["erin", "frank", "grace"] {
        client.issue_signature(for_subject(subject)).await.unwrap();
    }
    // Five issued in all for this SecretId.
    let status = client
        .issue_signature(for_subject("heidi"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), Reason::RateLimited);
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["quota"],
        "secret-id"
    );
    // Another key has its own per-SecretId quota.
    let other = IssueSignatureRequest {
        secret_id: OTHER_ID.into(),
        subject: "heidi".into(),
        ..Default::default()
    };
    client.issue_signature(other).await.unwrap();
}

async fn racing_issuers_never_exceed_the_quota(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        with_quotas(&[(Scope::Subject, "subject", "10/1h")]),
    )
    .await;
    let client = server.client().await;
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.issue_signature(for_subject("mallory")).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => assert_eq!(reason_of(&status), Reason::RateLimited),
        }
    }
    assert_eq!(ok, 10);
}

#[tokio::test]
async fn two_replicas_share_one_quota_and_redis_down_is_not_unlimited() {
    let mut redis = RedisServer::start();
    let keys = keys_dir();
    let args = ["--redis-url", &redis.url(), "--quota-per-subject", "6/1h"];
    let a = ServerProcess::start(keys.path(), &args);
    let b = ServerProcess::start(keys.path(), &args);
    let (mut ca, mut cb) = (connect(a.addr).await, connect(b.addr).await);
    for _ in 0..3 {
        ca.issue_signature(for_subject("trent")).await.unwrap();
        cb.issue_signature(for_subject("trent")).await.unwrap();
    }
    assert_eq!(
        refused(ca.issue_signature(for_subject("trent")).await),
        Reason::RateLimited
    );
    assert_eq!(
        refused(cb.issue_signature(for_subject("trent")).await),
        Reason::RateLimited
    );
    let keys_in_redis = redis.cli(&["KEYS", "vodsigner:quota:*"]).unwrap();
    assert!(
        keys_in_redis.contains("vodsigner:quota:{"),
        "{keys_in_redis}"
    );

    redis.stop();
    let started = Instant::now();
    assert_eq!(
        refused(ca.issue_signature(for_subject("victor")).await),
        Reason::StoreUnavailable
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The admission charges a subject's quota in one transaction of plain commands with its
/// index entries, no script: a Redis that lost its scripts (`SCRIPT FLUSH`, as after a
/// restart) admits as before, each issue charged once. A refused issue takes its charge and
/// its entries back.
#[tokio::test]
async fn the_admission_needs_no_script_and_a_refusal_leaves_nothing() {
    let redis = RedisServer::start();
    let keys = keys_dir();
    let args = [
        "--redis-url",
        &redis.url(),
        "--quota-per-subject",
        "4/1h",
        "--max-outstanding-per-subject",
        "10",
    ];
    let server = ServerProcess::start(keys.path(), &args);
    let mut client = connect(server.addr).await;
    for _ in 0..2 {
        client.issue_signature(for_subject("walt")).await.unwrap();
    }
    redis.cli(&["SCRIPT", "FLUSH"]).unwrap();
    for _ in 0..2 {
        client.issue_signature(for_subject("walt")).await.unwrap();
    }
    assert_eq!(
        refused(client.issue_signature(for_subject("walt")).await),
        Reason::RateLimited
    );
    let outstanding = redis.cli(&["KEYS", "vodsigner:sub:*:out"]).unwrap();
    let outstanding = outstanding.trim();
    assert_eq!(redis.cli(&["ZCARD", outstanding]).unwrap().trim(), "4");
    // Its TAT: four intervals (15 min each) past the first issue, not five.
    let quota = redis.cli(&["KEYS", "vodsigner:quota:*"]).unwrap();
    let tat: f64 = redis
        .cli(&["ZSCORE", quota.trim(), "t"])
        .unwrap()
        .parse()
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    assert!(
        (tat - now_ms - 4.0 * 900_000.0).abs() < 60_000.0,
        "{tat} {now_ms}"
    );
}

/// On Redis Cluster a subject's quota and index keys share one slot, so its admission's
/// transaction goes to that slot's master: two replicas share the cap and the quota, for
/// subjects spread over the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subjects_quota_and_cap_hold_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(|| common::topology::RedisCluster::start(3, false))
        .await
        .unwrap();
    let settings = || Settings {
        max_outstanding_per_subject: 3,
        ..with_quotas(&[(Scope::Subject, "subject", "5/1h")])
    };
    let store = || std::sync::Arc::new(redis_store(&cluster.url(), "vodsigner:"));
    let one = TestServer::start_on(store(), None, settings()).await;
    let two = TestServer::start_on(store(), None, settings()).await;
    let (mut a, mut b) = (one.client().await, two.client().await);
    let quota_of = |status: tonic::Status| {
        assert_eq!(reason_of(&status), Reason::RateLimited, "{status:?}");
        status.get_details_error_info().unwrap().metadata["quota"].clone()
    };
    for subject in ["ann", "bob", "cy", "dee", "eve", "fay"] {
        a.issue_signature(for_subject(subject)).await.unwrap();
        b.issue_signature(for_subject(subject)).await.unwrap();
        a.issue_signature(for_subject(subject)).await.unwrap();
        // The cap (3) refuses the next two, which still use up the quota (5)...
        let capped = b.issue_signature(for_subject(subject)).await.unwrap_err();
        assert_eq!(quota_of(capped), "outstanding");
        let capped = a.issue_signature(for_subject(subject)).await.unwrap_err();
        assert_eq!(quota_of(capped), "outstanding");
        // ... and the quota refuses the one after.
        let limited = b.issue_signature(for_subject(subject)).await.unwrap_err();
        assert_eq!(quota_of(limited), "subject");
    }
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["DBSIZE"]).unwrap() != "0"),
        "the subjects' keys land on every master"
    );
}

#[test]
fn bad_quota_flags_stop_the_start() {
    let keys = keys_dir();
    let out = serve_command()
        .arg("--keys-dir")
        .arg(keys.path())
        .args(["--active-key", SECRET_ID, "--quota-per-subject", "lots/1h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lots"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The quota script's arithmetic is `quota.rs`'s: the GCRA step of `src/store/lua/gcra.lua`,
/// run by a real Redis on the same inputs as `quota::gcra`, gives the same answers (room and
/// the new TAT, or the wait), edge cases and random ones alike.
#[test]
fn the_quota_script_computes_what_quota_rs_does() {
    let redis = RedisServer::start();
    let script = format!(
        "{}\nlocal room, value = gcra(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))\n\
         if room then return {{1, value}} end\nreturn {{0, value}}",
        include_str!("../src/store/lua/gcra.lua")
    );
    let now = 1_733_331_111_000u64;
    let mut cases = vec![
        (0, now, 1000, 0),
        (0, now, 1000, 5000),
        (now - 1, now, 1000, 0),
        (now, now, 1000, 0),
        (now + 1, now, 1000, 0),
        (now + 1000, now, 1000, 999),
        (now + 1000, now, 1000, 1000),
        (now + 5000, now, 250, 4000),
        (3, 2, 1, 0),
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let interval = 1 + x % 86_400_000;
        let tolerance = (x >> 20) % (interval * 20);
        let tat = now.saturating_sub(interval * 5) + (x >> 11) % (interval * 30);
        cases.push((tat, now, interval, tolerance));
    }
    for (tat, now, interval, tolerance) in cases {
        let args = [tat, now, interval, tolerance].map(|n| n.to_string());
        let mut cmd = vec!["EVAL", script.as_str(), "0"];
        cmd.extend(args.iter().map(String::as_str));
        let reply = redis.cli(&cmd).unwrap();
        let got: Vec<u64> = reply.lines().map(|l| l.trim().parse().unwrap()).collect();
        let expected = match vod_signer::quota::gcra(tat, now, interval, tolerance) {
            Ok(new_tat) => vec![1, new_tat],
            Err(wait) => vec![0, wait],
        };
        assert_eq!(got, expected, "gcra({tat}, {now}, {interval}, {tolerance})");
    }
}

/// A replica at `--max-concurrent-calls` without a queue sheds the rest at once with `RATE_LIMITED`, a
/// `RetryInfo` the clients back off on, and `quota=concurrency`; the admitted call still ends
/// well (never `STORE_UNAVAILABLE` from the server's own load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_call_carries_retry_info() {
    let redis = RedisServer::start();
    let options = vod_signer::server::ServerSettings {
        max_concurrent_calls: 1,
        max_queued_calls: 0,
        ..test_options()
    };
    // The one admitted call keeps its slot through the pause while the others arrive.
    let ended = calls_while_redis_pauses(&redis, options, 8, Duration::from_secs(3)).await;
    let (mut ok, mut shed) = (0, 0);
    for (result, _) in ended {
        match result {
            Ok(()) => ok += 1,
            Err(status) => {
                assert_eq!(reason_of(&status), Reason::RateLimited, "{status:?}");
                let delay = status.get_details_retry_info().unwrap().retry_delay;
                assert_eq!(delay, Some(vod_signer::api::layers::SHED_RETRY_AFTER));
                let info = status.get_details_error_info().unwrap();
                assert_eq!(info.metadata["quota"], "concurrency");
                shed += 1;
            }
        }
    }
    assert!(ok >= 1 && shed >= 1, "{ok} answered, {shed} shed");
}

/// `n` IssueSignature calls at once while Redis holds every command for `pause`: how each
/// ended (`Ok` or the refusal) and when, from the start.
async fn calls_while_redis_pauses(
    redis: &RedisServer,
    options: vod_signer::server::ServerSettings,
    n: usize,
    pause: Duration,
) -> Vec<(Result<(), tonic::Status>, Duration)> {
    let store = std::sync::Arc::new(redis_store_within(
        &redis.url(),
        "vodsigner:",
        Duration::from_secs(10),
    ));
    let server = TestServer::start_configured(store, None, Settings::default(), options).await;
    let client = server.client().await;
    client
        .clone()
        .issue_signature(for_subject(""))
        .await
        .unwrap();
    let millis = pause.as_millis().to_string();
    assert_eq!(
        redis.cli(&["CLIENT", "PAUSE", &millis, "ALL"]).as_deref(),
        Some("OK")
    );
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let result = client.issue_signature(for_subject("")).await.map(drop);
                (result, started.elapsed())
            })
        })
        .collect();
    let mut ended = Vec::new();
    for call in calls {
        ended.push(call.await.unwrap());
    }
    ended
}

/// Over `--max-concurrent-calls`, calls wait for a slot in the queue and are then served:
/// none is refused while the queue has room; past `--max-queued-calls` the rest are shed at
/// once, with the shed's `RetryInfo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_limit_wait_for_a_slot_up_to_the_queue_bound() {
    let redis = RedisServer::start();
    let options = vod_signer::server::ServerSettings {
        max_concurrent_calls: 1,
        max_queued_calls: 2,
        queue_timeout: Duration::from_secs(30),
        ..test_options()
    };
    // One call holds the slot through the pause, two wait for it, five find the queue full.
    let ended = calls_while_redis_pauses(&redis, options, 8, Duration::from_secs(2)).await;
    let ok = ended.iter().filter(|(r, _)| r.is_ok()).count();
    for (result, _) in &ended {
        if let Err(status) = result {
            assert_eq!(reason_of(status), Reason::RateLimited, "{status:?}");
            let delay = status.get_details_retry_info().unwrap().retry_delay;
            assert_eq!(delay, Some(vod_signer::api::layers::SHED_RETRY_AFTER));
            assert_eq!(
                status.get_details_error_info().unwrap().metadata["quota"],
                "concurrency"
            );
        }
    }
    assert_eq!(ok, 3, "1 served and 2 queued should succeed: {ended:?}");
}

/// A call that waits for a slot longer than `--queue-timeout-ms` is shed, no sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_shed_when_its_wait_for_a_slot_runs_out() {
    let redis = RedisServer::start();
    let queue_timeout = Duration::from_millis(300);
    let options = vod_signer::server::ServerSettings {
        max_concurrent_calls: 1,
        max_queued_calls: 16,
        queue_timeout,
        ..test_options()
    };
    // The pause outlasts the queue timeout by far: every waiting call runs out.
    let ended = calls_while_redis_pauses(&redis, options, 6, Duration::from_secs(3)).await;
    let mut shed = 0;
    for (result, at) in &ended {
        if let Err(status) = result {
            assert_eq!(reason_of(status), Reason::RateLimited, "{status:?}");
            assert!(
                *at >= queue_timeout,
                "shed after {at:?}, before the queue timeout"
            );
            shed += 1;
        }
    }
    assert_eq!(
        shed, 5,
        "the one admitted call succeeds, the 5 waiting are shed: {ended:?}"
    );
}
