//! Redis Cluster and Sentinel under change: a resharding and a master restart during a burst
//! of consumes (Cluster), a forced failover during a burst with `--min-replicas-ack 1`
//! (Sentinel). The ledger: every owner's consume succeeds exactly once (retrying with its
//! idempotency key through the outage), and every racing replay is refused.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::topology::{RedisCluster, SentinelGroup};
use common::*;
use tonic::transport::Channel;
use vod_signer::proto::IssueSignatureRequest;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::reason::Reason;
use vod_signer::service::Settings;

/// What a burst saw.
#[derive(Debug, Default)]
struct Ledger {
    consumed: usize,
    replays_refused: usize,
    owner_failures: Vec<(usize, Reason)>,
    accepted_twice: Vec<usize>,
}

/// Issues `n` signatures (retrying through outages), then for each runs an owner consume and
/// a racing replay with another key, both retrying while the store is unavailable.
async fn burst(client: &SignatureServiceClient<Channel>, n: usize, within: Duration) -> Ledger {
    let mut sigs = Vec::new();
    let mut issuer = client.clone();
    while sigs.len() < n {
        match issuer
            .issue_signature(IssueSignatureRequest::default())
            .await
        {
            Ok(r) => sigs.push(r.into_inner().signature),
            Err(s) => {
                assert_eq!(reason_of(&s), Reason::StoreUnavailable);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut tasks = Vec::new();
    for (i, sig) in sigs.into_iter().enumerate() {
        let (mut a, mut b) = (client.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let (owner, replay) = (format!("owner-{i}"), format!("replay-{i}"));
            tokio::join!(
                consume_retrying(&mut a, &sig, &owner, within),
                consume_retrying(&mut b, &sig, &replay, within)
            )
        }));
    }
    let mut ledger = Ledger::default();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            (Ok(_), Ok(_)) => ledger.accepted_twice.push(i),
            (Ok(_), Err(Reason::SignatureAlreadyUsed))
            | (Err(Reason::SignatureAlreadyUsed), Ok(_)) => {
                ledger.consumed += 1;
                ledger.replays_refused += 1;
            }
            (owner, replay) => ledger
                .owner_failures
                .push((i, owner.err().or(replay.err()).unwrap())),
        }
    }
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resharding_during_a_burst_loses_no_consume() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, false))
        .await
        .unwrap();
    let store = Arc::new(redis_store(&cluster.url(), "vodsigner:"));
    let server = TestServer::start_on(store, None, Settings::default()).await;
    let client = server.client().await;
    // Keys land on every master.
    let _ = burst(&client, 60, Duration::from_secs(5)).await;
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["DBSIZE"]).unwrap() != "0"),
        "keys on every node"
    );

    let (from, to) = (cluster.node_id(0), cluster.node_id(1));
    let seed = format!("127.0.0.1:{}", cluster.nodes[0].port);
    let reshard = std::thread::spawn(move || {
        Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &from,
                "--cluster-to",
                &to,
            ])
            .args([
                "--cluster-slots",
                "3000",
                "--cluster-yes",
                "--cluster-pipeline",
                "10",
            ])
            .output()
            .unwrap()
    });
    let ledger = burst(&client, 400, Duration::from_secs(20)).await;
    let out = reshard.join().unwrap();
    assert!(
        out.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        ledger.accepted_twice.is_empty() && ledger.owner_failures.is_empty(),
        "{ledger:?}"
    );
    assert_eq!(ledger.consumed, 400);
    // The slots really moved.
    let slots = cluster.nodes[1]
        .cli(&["CLUSTER", "SHARDS"])
        .unwrap_or_default();
    assert!(!slots.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_restart_during_a_burst() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, true))
        .await
        .unwrap();
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let url = cluster.lock().unwrap().url();
    let store = Arc::new(redis_store(&url, "vodsigner:"));
    let server = TestServer::start_on(store, None, Settings::default()).await;
    let client = server.client().await;
    let restarter = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            let mut cluster = cluster.lock().unwrap();
            cluster.nodes[2].kill_and_restart();
            cluster.wait_ok();
            started.elapsed()
        })
    };
    let ledger = burst(&client, 300, Duration::from_secs(30)).await;
    let outage = restarter.join().unwrap();
    println!("master restarted, cluster ok again after {outage:?}; {ledger:?}");
    assert!(
        ledger.accepted_twice.is_empty() && ledger.owner_failures.is_empty(),
        "{ledger:?}"
    );
    assert_eq!(ledger.consumed, 300);
}

/// What a steady stream of issue, consume and replay saw, across two service replicas.
#[derive(Debug, Default)]
struct Stream {
    /// Signatures issued (answered OK).
    issued: usize,
    /// Consumed by their owner (retrying with its key through outages).
    consumed: usize,
    /// Replays (another key, on the other replica) refused.
    replays_refused: usize,
    /// Owners that never succeeded, with the last reason (an issue that answered OK whose
    /// record vanished shows up here as `SIGNATURE_NOT_ISSUED`).
    owner_failures: Vec<(String, Reason)>,
    /// Signatures accepted under two keys.
    accepted_twice: usize,
    /// The longest stretch without a successful consume.
    longest_gap: Duration,
}

/// `workers` clients, each in a loop until `until`: issue on one replica, consume there with
/// its own key (retried through outages), replay on the other replica with another key.
async fn steady_stream(
    replicas: [SignatureServiceClient<Channel>; 2],
    workers: usize,
    until: Instant,
    owner_patience: Duration,
) -> Stream {
    let successes = Arc::new(std::sync::Mutex::new(vec![Instant::now()]));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (mut mine, mut other) = (replicas[w % 2].clone(), replicas[(w + 1) % 2].clone());
        let successes = successes.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Stream::default();
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                let sig = match mine.issue_signature(IssueSignatureRequest::default()).await {
                    Ok(r) => r.into_inner().signature,
                    Err(s) => {
                        assert_eq!(reason_of(&s), Reason::StoreUnavailable, "{s:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                seen.issued += 1;
                let owner = format!("owner-{w}-{n}");
                match consume_retrying(&mut mine, &sig, &owner, owner_patience).await {
                    Ok(_) => {
                        seen.consumed += 1;
                        successes.lock().unwrap().push(Instant::now());
                    }
                    Err(reason) => seen.owner_failures.push((owner, reason)),
                }
                let replay = format!("replay-{w}-{n}");
                match consume_retrying(&mut other, &sig, &replay, owner_patience).await {
                    Ok(_) => seen.accepted_twice += 1,
                    Err(Reason::SignatureAlreadyUsed) => seen.replays_refused += 1,
                    // The owner never got through: the replay must not either (checked above).
                    Err(_) => {}
                }
            }
            seen
        }));
    }
    let mut total = Stream::default();
    for task in tasks {
        let seen = task.await.unwrap();
        total.issued += seen.issued;
        total.consumed += seen.consumed;
        total.replays_refused += seen.replays_refused;
        total.accepted_twice += seen.accepted_twice;
        total.owner_failures.extend(seen.owner_failures);
    }
    let mut times = successes.lock().unwrap().clone();
    times.push(Instant::now());
    times.sort();
    total.longest_gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    total
}

/// A forced `SENTINEL FAILOVER` under a steady stream from two service replicas with
/// `--min-replicas-ack 1`, on the recommended shape (a master and two replicas): nothing is
/// accepted twice, every issue that answered OK survives (its owner is never refused
/// `SIGNATURE_NOT_ISSUED`), and every owner gets its upload by retrying with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_a_steady_stream_accepts_nothing_twice() {
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap();
    let keys = keys_dir();
    let url = group.url();
    let args = ["--redis-url", url.as_str(), "--min-replicas-ack", "1"];
    let servers = [
        ServerProcess::start(keys.path(), &args),
        ServerProcess::start(keys.path(), &args),
    ];
    for server in &servers {
        wait_health(server.addr, "", true, Duration::from_secs(10)).await;
    }
    let clients = [
        connect(servers[0].addr).await,
        connect(servers[1].addr).await,
    ];

    let old_master = group.master.port;
    let sentinel_port = group.sentinels[0].port;
    let failover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let out = Command::new("redis-cli")
            .args(["-p", &sentinel_port.to_string()])
            .args(["SENTINEL", "FAILOVER", "mymaster"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    // The stream runs on well past the failover and the old master's return as a replica.
    let until = Instant::now() + Duration::from_secs(25);
    let seen = steady_stream(clients, 16, until, Duration::from_secs(30)).await;
    assert_eq!(failover.join().unwrap(), "OK");
    let new_master = group.sentinels[0].master_port().unwrap();
    println!(
        "SENTINEL FAILOVER {old_master} -> {new_master} under a steady stream: issued {}, \
         consumed {}, replays refused {}, accepted twice {}, owners failed {}, longest gap \
         without a consume {:?}",
        seen.issued,
        seen.consumed,
        seen.replays_refused,
        seen.accepted_twice,
        seen.owner_failures.len(),
        seen.longest_gap
    );
    assert_ne!(new_master, old_master, "the failover happened");
    assert_eq!(seen.accepted_twice, 0, "accepted twice");
    assert!(seen.owner_failures.is_empty(), "{:?}", seen.owner_failures);
    assert_eq!(seen.consumed, seen.issued);
    assert!(seen.consumed > 100, "the stream ran: {}", seen.consumed);
}
