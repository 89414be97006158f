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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_during_a_burst_accepts_nothing_twice() {
    let group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap();
    let keys = keys_dir();
    let url = group.url();
    let server = ServerProcess::start(
        keys.path(),
        &["--redis-url", &url, "--min-replicas-ack", "1"],
    );
    wait_health(server.addr, "", true, Duration::from_secs(10)).await;
    let client = connect(server.addr).await;
    // Warm up (loads the scripts on the master, which the replica gets too).
    let warm = burst(&client, 20, Duration::from_secs(10)).await;
    assert_eq!(warm.consumed, 20, "{warm:?}");

    let old_master = group.master.port;
    let sentinel_port = group.sentinels[0].port;
    let failover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &sentinel_port.to_string(),
                "SENTINEL",
                "FAILOVER",
                "mymaster",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    let ledger = burst(&client, 300, Duration::from_secs(40)).await;
    assert_eq!(failover.join().unwrap(), "OK");
    let new_master = group.sentinels[0].master_port().unwrap();
    println!("failover {old_master} -> {new_master}; {ledger:?}");
    assert_ne!(new_master, old_master, "the failover happened");
    assert!(
        ledger.accepted_twice.is_empty(),
        "accepted twice: {ledger:?}"
    );
    // With --min-replicas-ack 1 issue waits for the replica too, so no issued record is lost
    // with the old master: every owner gets its upload.
    assert!(ledger.owner_failures.is_empty(), "{ledger:?}");
    assert_eq!(ledger.consumed, 300, "{ledger:?}");
    // The service follows the new master: a fresh signature works end to end.
    let after = burst(&client, 10, Duration::from_secs(20)).await;
    assert_eq!(after.consumed, 10, "{after:?}");
}
