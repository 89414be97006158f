//! Redis that fills up, evicts, or comes back empty (issue 23), against real `redis-server`
//! processes with a small `maxmemory`:
//!
//! - a full Redis (single and Cluster) refuses new signatures `STORE_FULL` before it is
//!   full, and every outstanding signature still consumes (or revokes) once it is over
//!   `maxmemory`;
//! - a `maxmemory-policy` that may evict makes health NOT_SERVING with a message naming the
//!   setting and the fix, unless `--allow-evicting-redis` (a warning and the metric);
//! - a Redis restarted without persistence is logged at error and counted, a reconnect, a
//!   restart from AOF and a Sentinel failover are not;
//! - refusals that repeat are logged at info at most once a second, with the folded count.
//!
//! The tests set `maxmemory` and the policy with `CONFIG SET` themselves; the service only
//! reads `INFO`. Waits are bounded by the memory watch's period (`MEMORY_POLL`), never a guess.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::topology::SentinelGroup;
use common::*;
use tonic::transport::Channel;
use vod_signer::fold::FOLD_WINDOW;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{IssueSignatureRequest, ListSignaturesRequest, RevokeSignatureRequest};
use vod_signer::reason::Reason;
use vod_signer::redis::memory::MEMORY_POLL;
use vod_signer::service::Settings;
use vod_signer::store::{RedisStore, StoreHealth};

/// How long the memory watch may take to see a change: a few of its periods (the machine is
/// shared; a reading itself is one `INFO`).
const WATCH_SEES: Duration = Duration::from_secs(MEMORY_POLL.as_secs() * 5);

/// The `maxmemory` the full-Redis tests give each master above what it uses at the start.
const ROOM: u64 = 8 << 20;

/// One `INFO` field of a node, as a number.
fn info_number(node: &RedisServer, field: &str) -> u64 {
    let info = node.cli(&["INFO"]).unwrap_or_default();
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO"))
}

/// Gives `node` a `maxmemory` of what it uses now plus `room`, under `noeviction`.
fn limit_memory(node: &RedisServer, room: u64) -> u64 {
    let max = info_number(node, "used_memory") + room;
    node.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    node.cli(&["CONFIG", "SET", "maxmemory", &max.to_string()])
        .unwrap();
    max
}

/// Writes filler keys (16 KiB each) straight to `node` until its `used_memory` reaches
/// `ratio` of its `maxmemory`, or until Redis refuses a write with OOM (`ratio` above 1).
/// Keys another Cluster master owns are answered MOVED and skipped. Returns whether Redis
/// refused a write.
async fn fill(node: &RedisServer, ratio: f64) -> bool {
    const VALUE: u64 = 16 << 10;
    let client = redis::Client::open(node.url()).unwrap();
    // The redis crate's default 500 ms per reply is too short on a busy machine.
    let patient = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .unwrap();
    let max = info_number(node, "maxmemory") as f64;
    let value = vec![b'x'; VALUE as usize];
    // Bounded: far more writes than `ROOM` holds.
    for i in 0..(4 * ROOM / VALUE) {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap();
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap();
        if used >= max * ratio {
            return false;
        }
        let key = format!("filler:{}:{i}", node.port);
        match redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query_async::<()>(&mut conn)
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some("OOM") => return true,
            Err(e) if e.code() == Some("MOVED") => {}
            Err(e) => panic!("filler SET on port {}: {e}", node.port),
        }
    }
    panic!("port {} never reached {ratio} of its maxmemory", node.port)
}

/// Issues with 16 concurrent callers until the store refuses. Every refusal must be
/// `STORE_FULL`. Every other issue is for a subject (so its index is exercised too). Returns
/// the signatures issued and the refusals' messages.
async fn issue_until_full(addr: std::net::SocketAddr) -> (Vec<String>, Vec<String>) {
    let client = connect(addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..16u32 {
        let mut client = client.clone();
        let stop = stop.clone();
        workers.spawn(async move {
            let (mut issued, mut refusals) = (Vec::new(), Vec::new());
            // Bounded: the room holds far fewer records than this.
            for i in 0..20_000u32 {
                if stop.load(Ordering::Relaxed) && refusals.len() >= 4 {
                    break;
                }
                let subject = if i % 2 == 0 {
                    format!("user-{}", (worker * 7 + i) % 50)
                } else {
                    String::new()
                };
                let request = IssueSignatureRequest {
                    subject,
                    ..Default::default()
                };
                match client.issue_signature(request).await {
                    Ok(r) => issued.push(r.into_inner().signature),
                    Err(status) => {
                        assert_eq!(reason_of(&status), Reason::StoreFull, "{status:?}");
                        refusals.push(status.message().to_owned());
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            (issued, refusals)
        });
    }
    let (mut issued, mut refusals) = (Vec::new(), Vec::new());
    while let Some(done) = workers.join_next().await {
        let (i, r) = done.unwrap();
        issued.extend(i);
        refusals.extend(r);
    }
    assert!(!refusals.is_empty(), "Redis never filled up");
    (issued, refusals)
}

/// Uses up every signature of `outstanding` with 16 concurrent callers: every 10th is
/// revoked, the others consumed (each with its own idempotency key). Panics on any refusal.
async fn use_up(client: &SignatureServiceClient<Channel>, outstanding: &[String]) {
    let mut workers = tokio::task::JoinSet::new();
    for chunk in outstanding.chunks(outstanding.len().div_ceil(16)) {
        let mut client = client.clone();
        let chunk: Vec<String> = chunk.to_vec();
        workers.spawn(async move {
            for (i, sig) in chunk.iter().enumerate() {
                if i % 10 == 9 {
                    let revoke = RevokeSignatureRequest {
                        signature: sig.clone(),
                    };
                    let before = match client.revoke_signature(revoke).await {
                        Ok(r) => r.into_inner().previous_state,
                        Err(status) => panic!("an outstanding signature was refused: {status:?}"),
                    };
                    assert_eq!(before, vod_signer::proto::SignatureState::Issued as i32);
                } else {
                    let consumed = client
                        .consume_signature(consume_with(sig, &format!("upload-{i}")))
                        .await;
                    if let Err(status) = consumed {
                        panic!("an outstanding signature was refused: {status:?}");
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
}

/// The figures of a full-Redis run, for the fault table of docs/faults.md.
fn report(what: &str, outstanding: usize, refusals: &[String], used: (u64, u64), max: u64) {
    eprintln!(
        "{what}: {outstanding} signatures outstanding when issuing stopped ({} refused \
         STORE_FULL meanwhile); all {outstanding} consumed or revoked over maxmemory; \
         used_memory {} -> {} bytes of maxmemory {max} ({:.0} B per record changed)",
        refusals.len(),
        used.0,
        used.1,
        (used.1 as f64 - used.0 as f64) / outstanding as f64
    );
}

/// The whole full-Redis story on the masters of `nodes`, served at `server`.
async fn full_redis_story(server: &TestServer, nodes: &[&RedisServer], what: &str) {
    let maxes: Vec<u64> = nodes.iter().map(|n| limit_memory(n, ROOM)).collect();
    // Most of the room with filler, the rest by issuing (so the issuing crosses the reserve).
    for node in nodes {
        fill(node, 0.85).await;
    }
    let (outstanding, refusals) = issue_until_full(server.addr).await;
    // The watch stopped issuing within the reserve: Redis itself had not refused anything.
    assert!(
        refusals[0].contains("within its memory reserve"),
        "the first refusal came from Redis, not from the reserve: {}",
        refusals[0]
    );
    let mut client = server.client().await;
    assert_eq!(
        health(server.addr, "").await,
        Some(1),
        "health stays SERVING"
    );

    // Now over maxmemory: Redis refuses every write that grows memory.
    for node in nodes {
        assert!(
            fill(node, 2.0).await,
            "Redis accepted writes past maxmemory"
        );
    }
    let used_before: u64 = nodes.iter().map(|n| info_number(n, "used_memory")).sum();
    for _ in 0..20 {
        assert_eq!(
            refused(
                client
                    .issue_signature(IssueSignatureRequest::default())
                    .await
            ),
            Reason::StoreFull
        );
    }
    // Listing a subject's signatures (its cleanup deletes) goes on too.
    let listing = ListSignaturesRequest {
        subject: "user-7".into(),
        ..Default::default()
    };
    client.list_signatures(listing).await.unwrap();
    use_up(&client, &outstanding).await;
    let used_after: u64 = nodes.iter().map(|n| info_number(n, "used_memory")).sum();
    // Every one is used up, once: a replay is refused as such.
    for sig in outstanding.iter().step_by(97) {
        let reason = refused(client.consume_signature(consume_req(sig)).await);
        assert!(
            matches!(
                reason,
                Reason::SignatureAlreadyUsed | Reason::SignatureRevoked
            ),
            "{reason}"
        );
    }
    // The gauge follows the watch's readings (every MEMORY_POLL, copied at each health check):
    // within the reserve (consumes rewrite records and free index entries, so a master can
    // dip just under maxmemory again).
    let deadline = Instant::now() + WATCH_SEES;
    let metrics = loop {
        let metrics = Exposition::parse(server.metrics.encode());
        let ratio = metrics.value("vodsigner_redis_memory_ratio", &[]).unwrap();
        if ratio >= 0.9 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "memory ratio {ratio}, within the reserve"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics
            .value(
                "vodsigner_requests_total",
                &[("rpc", "IssueSignature"), ("result", "STORE_FULL")]
            )
            .unwrap()
            >= 20.0
    );
    report(
        what,
        outstanding.len(),
        &refusals,
        (used_before, used_after),
        maxes.iter().sum(),
    );
}

#[tokio::test]
async fn a_full_redis_refuses_new_signatures_and_every_outstanding_one_is_used_up() {
    let redis = RedisServer::start();
    let store = Arc::new(redis_store_within(
        &redis.url(),
        "vodsigner:",
        SEMANTIC_STORE_TIMEOUT,
    ));
    let server = TestServer::start_on(store, Some(redis), Settings::default()).await;
    let redis = server.redis.as_ref().unwrap();
    full_redis_story(&server, &[redis], "one server").await;
}

#[tokio::test]
async fn a_full_cluster_refuses_new_signatures_and_every_outstanding_one_is_used_up() {
    let server = TestServer::start(Backend::Cluster).await;
    let cluster = server.cluster.as_ref().unwrap();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    full_redis_story(&server, &nodes, "3-master Cluster").await;
}

/// `vod-signer serve` (the real binary: its log is read) on `redis`, with `args`.
fn serve_on(keys: &tempfile::TempDir, redis: &RedisServer, args: &[&str]) -> ServerProcess {
    let url = redis.url();
    let mut all = vec!["--redis-url", url.as_str()];
    all.extend(args);
    ServerProcess::start(keys.path(), &all)
}

async fn metric(server: &ServerProcess, name: &str) -> Option<f64> {
    scrape(server.metrics_addr()).await.value(name, &[])
}

/// Waits until the gauge or counter `name` is `value`: the memory watch reads every
/// `MEMORY_POLL`, and health checks copy its findings into the metrics.
async fn wait_watched(server: &ServerProcess, name: &str, value: f64) {
    wait_metric(server.metrics_addr(), name, value, WATCH_SEES).await;
}

#[tokio::test]
async fn an_evicting_redis_stops_serving_and_says_how_to_fix_it() {
    let redis = RedisServer::start_configured(&["--maxmemory-policy", "allkeys-lru"], &[]);
    let keys = keys_dir();
    let server = serve_on(&keys, &redis, &[]);
    let line = server.wait_log(
        &["\"ERROR\"", "maxmemory-policy", "allkeys-lru"],
        WATCH_SEES,
    );
    assert!(line.contains("maxmemory-policy noeviction"), "{line}");
    assert!(line.contains("--allow-evicting-redis"), "{line}");
    // Set by a health check that found Redis answering: health is NOT_SERVING for the policy.
    wait_watched(&server, "vodsigner_redis_evicting", 1.0).await;
    assert_eq!(metric(&server, "vodsigner_store_up").await, Some(1.0));
    for service in ["", "vodsigner.v1.SignatureService"] {
        assert_eq!(health(server.addr, service).await, Some(2), "NOT_SERVING");
    }
    let mut client = connect(server.addr).await;
    let refusal = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason_of(&refusal), Reason::StoreUnavailable);
    assert!(refusal.message().contains("allkeys-lru"), "{refusal:?}");

    // Fixed on the running Redis: serving again within a reading or two, no restart.
    redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    let fixed = Instant::now();
    wait_health(server.addr, "", true, WATCH_SEES).await;
    eprintln!("policy fixed: SERVING again after {:?}", fixed.elapsed());
    server.wait_log(&["maxmemory-policy is noeviction again"], WATCH_SEES);
    let sig = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    client.consume_signature(consume_req(&sig)).await.unwrap();
    wait_watched(&server, "vodsigner_redis_evicting", 0.0).await;
}

#[tokio::test]
async fn allow_evicting_redis_serves_with_a_warning_and_the_metric() {
    // The default parameter group of a common managed Redis: every record has a TTL, so
    // every record is a candidate.
    let redis = RedisServer::start_configured(&["--maxmemory-policy", "volatile-lru"], &[]);
    let keys = keys_dir();
    let server = serve_on(&keys, &redis, &["--allow-evicting-redis"]);
    server.wait_log(
        &["\"WARN\"", "volatile-lru", "--allow-evicting-redis"],
        WATCH_SEES,
    );
    wait_health(
        server.addr,
        "vodsigner.v1.SignatureService",
        true,
        WATCH_SEES,
    )
    .await;
    let mut client = connect(server.addr).await;
    let sig = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    client.consume_signature(consume_req(&sig)).await.unwrap();
    wait_watched(&server, "vodsigner_redis_evicting", 1.0).await;
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
}

#[tokio::test]
async fn a_redis_that_came_back_empty_is_an_error_and_counted_a_reconnect_is_not() {
    let mut redis = RedisServer::start();
    let keys = keys_dir();
    let server = serve_on(&keys, &redis, &[]);
    wait_health(server.addr, "", true, WATCH_SEES).await;
    let mut client = connect(server.addr).await;
    let mut outstanding = Vec::new();
    for _ in 0..20 {
        let issued = client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
        outstanding.push(issued.into_inner().signature);
    }

    // A plain reconnect to the same server: the same run_id, not a reset.
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]).unwrap();
    server.wait_log(&["dialled a new one"], WATCH_SEES);
    // The watch reads at once on the new connection; give it a few readings more.
    tokio::time::sleep(MEMORY_POLL * 2).await;
    assert_eq!(
        metric(&server, "vodsigner_store_resets_total").await,
        Some(0.0)
    );

    // Restarted without persistence: every record is gone.
    redis.restart_empty();
    let restarted = Instant::now();
    let line = server.wait_log(&["\"ERROR\"", "came back without its records"], WATCH_SEES);
    eprintln!("restarted empty: logged {:?} after", restarted.elapsed());
    // The 20 records (and the audit events' stream), then none.
    let logged: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(logged["keys_before"].as_u64() >= Some(20), "{line}");
    assert_eq!(logged["keys_after"], 0, "{line}");
    assert!(line.contains("AOF"), "{line}");
    wait_watched(&server, "vodsigner_store_resets_total", 1.0).await;
    let reason = consume_retrying(&mut client, &outstanding[0], "k", WATCH_SEES).await;
    assert_eq!(reason, Err(Reason::SignatureNotIssued));
}

/// The store's view of the masters' `run_id`s changes from `before` (polled, bounded).
async fn wait_new_run_ids(store: &RedisStore, before: &[String]) {
    let deadline = Instant::now() + WATCH_SEES * 4;
    loop {
        let now = store.memory().unwrap().run_ids;
        if !now.is_empty() && now != before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never saw a new server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consume that waits out a failover or restart, with one idempotency key.
async fn consumes(client: &mut SignatureServiceClient<Channel>, sig: &str) {
    consume_retrying(client, sig, sig, WATCH_SEES * 2)
        .await
        .unwrap_or_else(|r| panic!("an outstanding signature was refused {r}"));
}

#[tokio::test]
async fn a_restart_from_aof_is_not_a_reset() {
    let redis = RedisServer::start_persistent();
    let store = Arc::new(redis_store(&redis.url(), "vodsigner:"));
    let mut server = TestServer::start_on(store.clone(), Some(redis), Settings::default()).await;
    let mut client = server.client().await;
    let mut outstanding = Vec::new();
    for _ in 0..20 {
        let issued = client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
        outstanding.push(issued.into_inner().signature);
    }
    let before = store.memory().unwrap().run_ids;
    server.redis.as_mut().unwrap().kill_and_restart();
    wait_new_run_ids(&store, &before).await;
    assert_eq!(store.memory().unwrap().resets, 0);
    for sig in &outstanding {
        consumes(&mut client, sig).await;
    }
}

#[tokio::test]
async fn a_sentinel_failover_to_a_replica_with_the_data_is_not_a_reset() {
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap();
    let store = Arc::new(redis_store_within(
        &group.url(),
        "vodsigner:",
        SEMANTIC_STORE_TIMEOUT,
    ));
    let server = TestServer::start_on(store.clone(), None, Settings::default()).await;
    let mut client = server.client().await;
    let mut outstanding = Vec::new();
    for _ in 0..20 {
        let issued = client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
        outstanding.push(issued.into_inner().signature);
    }
    // Both replicas have every record before the failover.
    group
        .master
        .cli(&["WAIT", "2", &WATCH_SEES.as_millis().to_string()])
        .unwrap();
    let before = store.memory().unwrap().run_ids;
    group.sentinels[0]
        .cli(&["SENTINEL", "FAILOVER", "mymaster"])
        .unwrap();
    wait_new_run_ids(&store, &before).await;
    assert_eq!(store.memory().unwrap().resets, 0);
    for sig in &outstanding {
        consumes(&mut client, sig).await;
    }
    drop(group);
}

#[tokio::test]
async fn repeated_refusals_are_logged_once_a_second_with_what_was_folded() {
    // A Redis that is not there: every consume is refused STORE_UNAVAILABLE within the store
    // timeout.
    let keys = keys_dir();
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let server = ServerProcess::start(keys.path(), &["--redis-url", &url]);
    let client = connect(server.addr).await;
    let now = now();
    let sig = forge(
        SECRET_ID,
        SECRET_KEY,
        now,
        now + 600,
        7,
        &Default::default(),
    );
    const BURST: usize = 300;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let mut client = client.clone();
        let request = consume_req(&sig);
        calls.spawn(async move { client.consume_signature(request).await });
    }
    while let Some(done) = calls.join_next().await {
        assert_eq!(refused(done.unwrap()), Reason::StoreUnavailable);
    }
    let burst = started.elapsed();

    let lines = |level: &str| -> Vec<serde_json::Value> {
        server
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["message"] == "refused"
                    && v["reason"] == "STORE_UNAVAILABLE"
                    && v["level"] == level
            })
            .collect()
    };
    // Every refusal has its line (the lines are written before the answers; the pipe may
    // deliver them a little later).
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines("WARN").len() + lines("DEBUG").len() < BURST {
        assert!(Instant::now() < deadline, "not every refusal was logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loud = lines("WARN");
    let windows = (burst.as_secs_f64() / FOLD_WINDOW.as_secs_f64()).floor() as usize + 1;
    assert!(
        loud.len() <= windows,
        "{} warning lines for a burst of {BURST} in {burst:?}",
        loud.len()
    );
    let folded = |lines: &[serde_json::Value]| -> u64 {
        lines
            .iter()
            .map(|l| 1 + l["folded"].as_u64().expect("a folded count"))
            .sum()
    };
    assert!(folded(&loud) <= BURST as u64);

    // Once the window is over, the next refusal's line carries what the burst folded.
    tokio::time::sleep_until((started + burst + FOLD_WINDOW).into()).await;
    let mut client = client.clone();
    assert_eq!(
        refused(client.consume_signature(consume_req(&sig)).await),
        Reason::StoreUnavailable
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines("WARN").len() == loud.len() {
        assert!(
            Instant::now() < deadline,
            "the next refusal was not logged as a warning"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loud = lines("WARN");
    assert_eq!(folded(&loud), BURST as u64 + 1, "{loud:?}");
    eprintln!(
        "a burst of {BURST} STORE_UNAVAILABLE refusals in {burst:?}: {} warning lines (then one \
         more carrying folded={}), every refusal at debug",
        loud.len() - 1,
        loud.last().unwrap()["folded"]
    );
    let counted = scrape(server.metrics_addr())
        .await
        .value(
            "vodsigner_requests_total",
            &[("rpc", "ConsumeSignature"), ("result", "STORE_UNAVAILABLE")],
        )
        .unwrap();
    assert_eq!(
        counted,
        BURST as f64 + 1.0,
        "the metric counts every refusal"
    );
}

/// docs/redis.md's figure: what consuming an outstanding signature adds to Redis' memory (a
/// consume rewrites the record in place, so a full Redis grows past `maxmemory` by that much
/// per consume), with and without a subject.
/// `cargo test --test redis_memory -- --ignored --nocapture measure_what_a_consume_adds`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_what_a_consume_adds() {
    const N: usize = 10_000;
    for (label, subjects) in [("no subject", 0), ("1 000 subjects x 10", 1_000)] {
        let server = TestServer::start(Backend::Redis).await;
        let mut client = server.client().await;
        let redis = server.redis.as_ref().unwrap();
        let empty = info_number(redis, "used_memory");
        let mut outstanding = Vec::with_capacity(N);
        for i in 0..N {
            let subject = match subjects {
                0 => String::new(),
                n => format!("user-{}", i % n),
            };
            let request = IssueSignatureRequest {
                subject,
                ..Default::default()
            };
            let issued = client.issue_signature(request).await.unwrap();
            outstanding.push(issued.into_inner().signature);
        }
        let issued = info_number(redis, "used_memory");
        for (i, sig) in outstanding.iter().enumerate() {
            client
                .consume_signature(consume_with(sig, &format!("upload-{i}")))
                .await
                .unwrap();
        }
        let consumed = info_number(redis, "used_memory");
        let per_record = (issued - empty) as f64 / N as f64;
        let per_consume = (consumed as f64 - issued as f64) / N as f64;
        println!(
            "{label}: {per_record:.0} B per outstanding record, {per_consume:+.0} B per consume \
             ({:+.0} % of what the records held)",
            100.0 * per_consume / per_record
        );
    }
}
