//! Redis Cluster and Sentinel under change: a resharding and a master restart during a burst
//! of consumes (Cluster), a forced failover during a burst with `--min-replicas-ack 1`
//! (Sentinel). The ledger: every owner's consume succeeds exactly once (retrying with its
//! idempotency key through the outage), and every racing replay is refused.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// `done` counts the signatures whose owner and replay both finished.
async fn burst(
    client: &SignatureServiceClient<Channel>,
    n: usize,
    within: Duration,
    done: Arc<AtomicUsize>,
) -> Ledger {
    let mut sigs = Vec::new();
    let mut issuer = client.clone();
    while sigs.len() < n {
        match issuer
            .issue_signature(IssueSignatureRequest::default())
            .await
        {
            Ok(r) => sigs.push(r.into_inner().signature),
            Err(s) => {
                assert!(
                    reason_of(&s) == Reason::StoreUnavailable || is_shed(&s),
                    "{s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut tasks = Vec::new();
    for (i, sig) in sigs.into_iter().enumerate() {
        let (mut a, mut b) = (client.clone(), client.clone());
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let (owner, replay) = (format!("owner-{i}"), format!("replay-{i}"));
            let outcome = tokio::join!(
                consume_retrying(&mut a, &sig, &owner, within),
                consume_retrying(&mut b, &sig, &replay, within)
            );
            done.fetch_add(1, Ordering::SeqCst);
            outcome
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

/// Blocks (a bounded poll) until `counter` reaches `n`: faults are injected once a burst is
/// under way, paced by its progress rather than by a timer.
fn wait_until(counter: &AtomicUsize, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while counter.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the load did not reach {n} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Which node id owns each of the 16384 slots, from `CLUSTER NODES` on `node`.
fn slot_owners(node: &RedisServer) -> Vec<Option<String>> {
    let mut owners = vec![None; 16384];
    let nodes = node.cli(&["CLUSTER", "NODES"]).unwrap();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // id addr flags master ping pong epoch link slot...; "[slot->-id]" are migrations.
        for range in fields.iter().skip(8).filter(|f| !f.starts_with('[')) {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            let (lo, hi) = (lo.parse::<usize>().unwrap(), hi.parse::<usize>().unwrap());
            owners[lo..=hi].fill(Some(fields[0].to_owned()));
        }
    }
    owners
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
    let _ = burst(&client, 60, Duration::from_secs(5), Arc::default()).await;
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["DBSIZE"]).unwrap() != "0"),
        "keys on every node"
    );

    let (from, to) = (cluster.node_id(0), cluster.node_id(1));
    let before = slot_owners(&cluster.nodes[2]);
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
    let ledger = burst(&client, 400, Duration::from_secs(20), Arc::default()).await;
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
    // The slots really moved: 3000 of node 0's slots are node 1's now, as every node sees
    // it, and records of the burst live in moved slots on node 1.
    let (from, to) = (cluster.node_id(0), cluster.node_id(1));
    let after = slot_owners(&cluster.nodes[1]);
    let moved: Vec<usize> = (0..16384)
        .filter(|&slot| before[slot].as_deref() == Some(from.as_str()))
        .filter(|&slot| after[slot].as_deref() == Some(to.as_str()))
        .collect();
    assert_eq!(moved.len(), 3000, "slots moved from node 0 to node 1");
    // The other nodes learn it by gossip: within two node timeouts (3 s each).
    let deadline = Instant::now() + Duration::from_secs(6);
    for node in &cluster.nodes {
        while !{
            let owners = slot_owners(node);
            moved
                .iter()
                .all(|&s| owners[s].as_deref() == Some(to.as_str()))
        } {
            assert!(
                Instant::now() < deadline,
                "node {} does not see the moved slots on node 1",
                node.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let moved_keys: usize = moved
        .iter()
        .map(|slot| {
            let count = cluster.nodes[1]
                .cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
                .unwrap();
            count.parse::<usize>().unwrap()
        })
        .sum();
    assert!(moved_keys > 0, "no record lives in a moved slot on node 1");
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
    let done = Arc::new(AtomicUsize::new(0));
    let restarter = {
        let (cluster, done) = (cluster.clone(), done.clone());
        std::thread::spawn(move || {
            // The master goes down once the burst is under way.
            wait_until(&done, 30, Duration::from_secs(30));
            let started = Instant::now();
            let mut cluster = cluster.lock().unwrap();
            cluster.nodes[2].kill_and_restart();
            cluster.wait_ok();
            started.elapsed()
        })
    };
    let ledger = burst(&client, 300, Duration::from_secs(30), done.clone()).await;
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
    consumed: Arc<AtomicUsize>,
) -> Stream {
    let successes = Arc::new(std::sync::Mutex::new(vec![Instant::now()]));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (mut mine, mut other) = (replicas[w % 2].clone(), replicas[(w + 1) % 2].clone());
        let (successes, consumed) = (successes.clone(), consumed.clone());
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
                        consumed.fetch_add(1, Ordering::SeqCst);
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
    let consumed = Arc::new(AtomicUsize::new(0));
    let progress = consumed.clone();
    let failover = std::thread::spawn(move || {
        // The failover comes once the stream runs (consumes done through both replicas),
        // early enough in its 25 s for the stream to run well past the failover.
        wait_until(&progress, 20, Duration::from_secs(15));
        let out = Command::new("redis-cli")
            .args(["-p", &sentinel_port.to_string()])
            .args(["SENTINEL", "FAILOVER", "mymaster"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    // The stream runs on well past the failover and the old master's return as a replica.
    let until = Instant::now() + Duration::from_secs(25);
    let seen = steady_stream(clients, 16, until, Duration::from_secs(30), consumed).await;
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
