//! How long a Sentinel failover stops each vod-signer replica from issuing and from
//! consuming, counted per replica and per RPC (a gap counted over both replicas together can
//! hide one replica's outage).
//!
//! The shape of issue 23: a master, two replicas and three sentinels (`down-after` 1 s,
//! `tests/common/topology.rs`); two `vod-signer serve` processes with `--min-replicas-ack 1`
//! on `redis+sentinel://`; three clients, each issuing on one replica and consuming, on the
//! other, the oldest of a stock of signatures it was issued, continuously. Then `SENTINEL
//! FAILOVER`, or a SIGKILL of the master. Every issued signature must still consume (no
//! record lost), and nothing but `STORE_UNAVAILABLE` may be refused. The default suite runs
//! one forced failover; the measurements (ten runs of each fault, and three forced failovers
//! with Redis' default `repl-diskless-sync-delay`) are `#[ignore]`d:
//!
//! ```sh
//! cargo test --release --test failover_gap -- --ignored --nocapture
//! ```
//!
//! `FAILOVER_RUNS=N` changes the number of runs, `FAILOVER_LOGS=DIR` keeps every process'
//! log.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::topology::SentinelGroup;
use common::*;
use tonic::transport::Channel;
use vod_signer::proto::IssueSignatureRequest;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::reason::Reason;

/// Sentinel `down-after-milliseconds` of `SentinelGroup`.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Goal after `SENTINEL FAILOVER`: the longest stretch without a success, per replica and RPC.
const FORCED_GOAL: Duration = Duration::from_secs(2);
/// Goal after a SIGKILL of the master: the sentinels first need `down-after` to notice.
const KILLED_GOAL: Duration = DOWN_AFTER.saturating_add(Duration::from_secs(2));
/// A call's deadline: above the store timeout (250 ms), so a refusal comes from the server.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the measured runs go on after the fault: past every goal, and past the old
/// master's return as a replica (about 11 s after a forced failover: the moment a `WAIT`
/// may have to count it).
const AFTER_FAULT: Duration = Duration::from_secs(15);
/// The default suite's run: past the goal and the sentinels' `failover-timeout` (4 s), by
/// which the failover has ended.
const AFTER_FAULT_SHORT: Duration = Duration::from_secs(5);
/// Clients, as in the issue.
const CLIENTS: usize = 3;
/// Signatures each client holds issued and not yet consumed: consumes are measured on their
/// own, not only while issuing works.
const STOCK: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    Issue,
    Consume,
}

/// Every call's outcome: (replica, RPC) -> (when it ended, refusal or None for a success).
type Calls = Arc<Mutex<BTreeMap<(usize, Rpc), Vec<(Instant, Option<String>)>>>>;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `SENTINEL FAILOVER mymaster`.
    Forced,
    /// The same on data nodes with Redis' default `repl-diskless-sync-delay` (5 s) instead of
    /// docs/redis.md's 0: what an operator who skipped that setting sees.
    ForcedDefaultSyncDelay,
    /// SIGKILL of the master's process.
    Killed,
}

/// One run: the per-replica per-RPC longest gap after the fault, and what the refusals were.
struct Run {
    /// The longest gap, and when it began after the fault.
    gaps: BTreeMap<(usize, Rpc), (Duration, Duration)>,
    refusals: BTreeMap<(usize, Rpc), BTreeMap<String, usize>>,
    /// What must never happen: a refusal other than STORE_UNAVAILABLE (a lost record shows
    /// as SIGNATURE_NOT_ISSUED), or an issued signature that never consumed.
    unexpected: Vec<String>,
    signers: [ServerProcess; 2],
    group: SentinelGroup,
}

/// Issues on `mine`, then consumes its oldest signature on `other` once it holds [`STOCK`]
/// (retrying it with its own key while the answer is unknown, on the next rounds), until
/// `stop`. Every outcome goes to
/// `calls`. Returns the signatures whose consume never succeeded (the caller drains them).
async fn client(
    (mine_i, mut mine): (usize, SignatureServiceClient<Channel>),
    (other_i, mut other): (usize, SignatureServiceClient<Channel>),
    stop: Arc<AtomicBool>,
    calls: Calls,
    c: usize,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut pending: Vec<(String, String)> = Vec::new();
    // Once the stock is full, every round consumes, whether its issue worked or not.
    let mut stocked = false;
    // Refusals that must never happen (a lost record is SIGNATURE_NOT_ISSUED).
    let mut unexpected = Vec::new();
    let mut n = 0;
    let record = |replica, rpc, outcome: Option<String>| {
        calls
            .lock()
            .unwrap()
            .entry((replica, rpc))
            .or_default()
            .push((Instant::now(), outcome));
    };
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match tokio::time::timeout(
            CALL_TIMEOUT,
            mine.issue_signature(IssueSignatureRequest::default()),
        )
        .await
        {
            Ok(Ok(r)) => {
                record(mine_i, Rpc::Issue, None);
                pending.push((r.into_inner().signature, format!("owner-{c}-{n}")));
            }
            Ok(Err(s)) => {
                if reason_of(&s) != Reason::StoreUnavailable {
                    unexpected.push(format!("issue on signer-{}: {s:?}", mine_i + 1));
                }
                record(mine_i, Rpc::Issue, Some(s.message().to_owned()));
            }
            Err(_) => record(mine_i, Rpc::Issue, Some("client deadline".into())),
        }
        // The oldest first: a signature whose consume failed is tried again with its key.
        // A stock is kept, so consumes go on being tried while issuing fails.
        stocked |= pending.len() > STOCK;
        if stocked && let Some((sig, key)) = pending.first().cloned() {
            match tokio::time::timeout(
                CALL_TIMEOUT,
                other.consume_signature(consume_with(&sig, &key)),
            )
            .await
            {
                Ok(Ok(_)) => {
                    record(other_i, Rpc::Consume, None);
                    pending.remove(0);
                }
                Ok(Err(s)) => {
                    // Anything but "unknown, retry" would be a lost record or a bug.
                    if reason_of(&s) == Reason::StoreUnavailable {
                        record(other_i, Rpc::Consume, Some(s.message().to_owned()));
                    } else {
                        unexpected.push(format!("consume on signer-{}: {s:?}", other_i + 1));
                        pending.remove(0);
                    }
                }
                Err(_) => record(other_i, Rpc::Consume, Some("client deadline".into())),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (pending, unexpected)
}

/// The longest stretch without a success from `from` to `to`, and when it began (after
/// `from`).
fn longest_gap(
    outcomes: &[(Instant, Option<String>)],
    from: Instant,
    to: Instant,
) -> (Duration, Duration) {
    let mut last = from;
    let mut longest = (Duration::ZERO, Duration::ZERO);
    for at in outcomes
        .iter()
        .filter(|(at, o)| o.is_none() && *at >= from)
        .map(|(at, _)| *at)
        .chain([to])
    {
        if at - last > longest.0 {
            longest = (at - last, last - from);
        }
        last = at;
    }
    longest
}

/// Starts the shape, runs the load, injects `fault` once it runs, goes on `after` it, and
/// measures.
async fn run(fault: Fault, after: Duration) -> Run {
    let extra: &'static [&'static str] = match fault {
        Fault::ForcedDefaultSyncDelay => &["--repl-diskless-sync-delay", "5"],
        _ => &[],
    };
    let mut group = tokio::task::spawn_blocking(|| SentinelGroup::start_with(extra))
        .await
        .unwrap();
    let keys = keys_dir();
    let url = group.url();
    let args = ["--redis-url", url.as_str(), "--min-replicas-ack", "1"];
    let signers = [
        ServerProcess::start(keys.path(), &args),
        ServerProcess::start(keys.path(), &args),
    ];
    for s in &signers {
        wait_health(s.addr, "", true, Duration::from_secs(10)).await;
    }
    let replicas = [
        connect(signers[0].addr).await,
        connect(signers[1].addr).await,
    ];
    let calls: Calls = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (a, b) = (c % 2, (c + 1) % 2);
        tasks.push(tokio::spawn(client(
            (a, replicas[a].clone()),
            (b, replicas[b].clone()),
            stop.clone(),
            calls.clone(),
            c,
        )));
    }
    // The fault comes once every replica consumes (each client's stock is full).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let consuming = {
            let calls = calls.lock().unwrap();
            (0..2).all(|r| {
                calls.get(&(r, Rpc::Consume)).is_some_and(|o| {
                    o.iter().filter(|(_, refusal)| refusal.is_none()).count() >= 20
                })
            })
        };
        if consuming {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clients did not start consuming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old_master = group.master.port;
    let at = Instant::now();
    match fault {
        Fault::Forced | Fault::ForcedDefaultSyncDelay => {
            let out = group.sentinels[0]
                .cli(&["SENTINEL", "FAILOVER", "mymaster"])
                .unwrap_or_default();
            assert_eq!(out, "OK", "SENTINEL FAILOVER: {out}");
        }
        Fault::Killed => group.master.stop(),
    }
    tokio::time::sleep(after).await;
    stop.store(true, Ordering::Relaxed);
    let (mut pending, mut unexpected) = (Vec::new(), Vec::new());
    for t in tasks {
        let (p, u) = t.await.unwrap();
        pending.extend(p);
        unexpected.extend(u);
    }
    let end = Instant::now();
    // Every issue that answered OK must still consume: its record survived the failover.
    for (sig, key) in pending {
        let mut c = replicas[0].clone();
        if let Err(reason) = consume_retrying(&mut c, &sig, &key, Duration::from_secs(10)).await {
            unexpected.push(format!("an issued signature did not consume: {reason:?}"));
        }
    }
    let new_master = group.sentinels[1].master_port();
    assert_ne!(new_master, Some(old_master), "the sentinels failed over");
    let calls = calls.lock().unwrap();
    let mut gaps = BTreeMap::new();
    let mut refusals: BTreeMap<(usize, Rpc), BTreeMap<String, usize>> = BTreeMap::new();
    for (&k, outcomes) in calls.iter() {
        gaps.insert(k, longest_gap(outcomes, at, end));
        for (when, o) in outcomes {
            if let Some(o) = o
                && *when >= at
            {
                // The message without its numbers, so alike refusals fold together.
                let shape: String = o.chars().filter(|c| !c.is_ascii_digit()).collect();
                *refusals.entry(k).or_default().entry(shape).or_default() += 1;
            }
        }
    }
    assert_eq!(gaps.len(), 4, "every replica issued and consumed: {gaps:?}");
    // The setting that makes the outage 5 s longer is named to the operator, and only then.
    let warning = "delays a replica's full sync";
    for s in &signers {
        if matches!(fault, Fault::ForcedDefaultSyncDelay) {
            s.wait_log(
                &[warning, "repl-diskless-sync-delay 5 s"],
                Duration::from_secs(5),
            );
        } else {
            let lines = s.stderr.lock().unwrap();
            assert!(
                !lines.iter().any(|l| l.contains(warning)),
                "a warning without cause"
            );
        }
    }
    Run {
        gaps,
        refusals,
        unexpected,
        signers,
        group,
    }
}

fn report(fault: Fault, i: usize, run: &Run) {
    let gaps: Vec<String> = run
        .gaps
        .iter()
        .map(|((r, rpc), (g, from))| {
            format!(
                "signer-{} {rpc:?} {:.2} s (from +{:.2} s)",
                r + 1,
                g.as_secs_f64(),
                from.as_secs_f64()
            )
        })
        .collect();
    println!("{fault:?} run {i}: {}", gaps.join(", "));
    for ((r, rpc), shapes) in &run.refusals {
        for (shape, n) in shapes {
            println!("    signer-{} {rpc:?} refused {n}x: {shape}", r + 1);
        }
    }
}

fn worst(run: &Run) -> Duration {
    run.gaps.values().map(|g| g.0).max().unwrap_or_default()
}

/// Issue 23's goal for a forced failover: each replica issues and consumes again within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_stops_issuing_and_consuming_at_most_2_s_per_replica() {
    let run = run(Fault::Forced, AFTER_FAULT_SHORT).await;
    report(Fault::Forced, 1, &run);
    keep_logs("forced", &run);
    assert!(run.unexpected.is_empty(), "{:#?}", run.unexpected);
    assert!(worst(&run) <= FORCED_GOAL, "gaps {:?}", run.gaps);
}

/// Ten runs of each: a forced failover (goal 2 s) and a SIGKILL of the master (goal
/// `down-after` + 2 s), each gap per replica and per RPC. `FAILOVER_RUNS` changes the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, about 6 minutes: run with --ignored --nocapture"]
async fn failover_gaps_measured() {
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut failed = Vec::new();
    for (fault, goal) in [(Fault::Forced, FORCED_GOAL), (Fault::Killed, KILLED_GOAL)] {
        for i in 1..=runs {
            let run = run(fault, AFTER_FAULT).await;
            report(fault, i, &run);
            keep_logs(&format!("{fault:?}-{i}"), &run);
            if !run.unexpected.is_empty() {
                failed.push(format!("{fault:?} run {i}: {:#?}", run.unexpected));
            }
            if worst(&run) > goal {
                failed.push(format!("{fault:?} run {i}: {:?}", run.gaps));
                dump(&run);
            }
        }
    }
    assert!(failed.is_empty(), "over the goal: {failed:#?}");
}

/// What a run over its goal left to read: the signers' store lines and the sentinels' logs.
fn dump(run: &Run) {
    for (i, s) in run.signers.iter().enumerate() {
        for line in s.stderr.lock().unwrap().iter() {
            if line.contains("master") || line.contains("WAIT") || line.contains("Redis") {
                println!("signer-{}: {line}", i + 1);
            }
        }
    }
    for (i, s) in run.group.sentinels.iter().enumerate() {
        println!("sentinel-{i}:\n{}", s.log());
    }
}

/// With `FAILOVER_LOGS=DIR`, every process' log of the run goes to `DIR/<name>.*.log` (the
/// signers at trace level: their WAIT lines say how many replicas each write waited for).
fn keep_logs(name: &str, run: &Run) {
    let Ok(dir) = std::env::var("FAILOVER_LOGS") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    for (i, s) in run.signers.iter().enumerate() {
        let lines = s.stderr.lock().unwrap().join("\n");
        std::fs::write(dir.join(format!("{name}.signer-{}.log", i + 1)), lines).unwrap();
    }
    for (i, s) in run.group.sentinels.iter().enumerate() {
        std::fs::write(dir.join(format!("{name}.sentinel-{}.log", i + 1)), s.log()).unwrap();
    }
}

/// Why docs/redis.md asks for `repl-diskless-sync-delay 0`: with Redis' default (5 s), the
/// replica that follows the new master needs a full sync (it took writes from the old master
/// that the promoted one never saw), the new master waits that delay before sending it, and
/// until then it has no online replica, so no write can be acknowledged. Prints the gaps;
/// nothing is accepted twice nor lost either way (checked by the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn failover_with_the_default_diskless_sync_delay_measured() {
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for i in 1..=runs {
        let run = run(Fault::ForcedDefaultSyncDelay, AFTER_FAULT).await;
        report(Fault::ForcedDefaultSyncDelay, i, &run);
        keep_logs(&format!("{:?}-{i}", Fault::ForcedDefaultSyncDelay), &run);
        assert!(run.unexpected.is_empty(), "{:#?}", run.unexpected);
    }
}
