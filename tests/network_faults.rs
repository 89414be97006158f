//! Network-level faults: every Redis node, sentinel, vod-signer replica (the real binary) and
//! client runs in its own network namespace (`tests/common/netns/`), and faults are nftables
//! drop rules in the hub's bridge: silence, never a reset. Clients drive a steady load of
//! issue, consume, replay and revoke; every call goes to a history
//! (`target/fault-histories/<scenario>.jsonl`, with the processes' logs next to it) that
//! `tests/common/history.rs` checks.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). The default suite runs the black hole
//! and the split brain with the safe settings; the others are `#[ignore]` (CI runs them after
//! the suite: `cargo test --release --test network_faults -- --ignored --nocapture`).

mod common;
// Only this test binary uses them, so they are not in `common/mod.rs` (every other test
// binary would compile them, and run the checker's unit tests again).
#[path = "common/history.rs"]
mod history;
#[path = "common/netns/mod.rs"]
mod netns;

use std::time::{Duration, Instant};

use history::{Call, Marks, Report};
use netns::load::{Load, drive};
use netns::nodes::{self, REDIS_PORT};
use netns::{Host, Net, NsProcess, artifacts_dir, wait_for};

/// The load every scenario runs: two client hosts, 6 workers each.
const WORKERS: usize = 6;
/// A worker's pause between signatures.
const PAUSE: Duration = Duration::from_millis(10);
/// Calls' deadline: well above the store timeout, so a refusal comes from the server.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long after a heal the service is expected to consume again on every replica (it sizes
/// the load's window after the heal; the measured time is printed): the sentinels are
/// polled every second, a dark connection is replaced after 3 timeouts or one failed health
/// check (redials at most every 500 ms), and a call may wait a store timeout on the way.
fn recovery_budget() -> Duration {
    Duration::from_secs(1)
        + 2 * Duration::from_millis(500)
        + 4 * nodes::STORE_TIMEOUT
        + 2 * nodes::HEALTH_INTERVAL
}

/// How long the sentinels take at most to promote a replica once the master went silent.
fn failover_budget() -> Duration {
    nodes::DOWN_AFTER + nodes::FAILOVER_TIMEOUT + Duration::from_secs(2)
}

/// The hosts and processes of a scenario. Processes are dropped first, then the namespaces.
struct World {
    procs: Vec<NsProcess>,
    master: Host,
    replicas: Vec<Host>,
    sentinels: Vec<Host>,
    nodes: Vec<Host>,
    signers: Vec<Host>,
    clients: Vec<Host>,
    name: String,
    /// Every n-th signature is presented 2 s after its issue (0: none).
    late_every: usize,
    _keys: tempfile::TempDir,
    dir: tempfile::TempDir,
    net: Net,
}

impl World {
    fn log(&self, host: &Host) -> std::path::PathBuf {
        artifacts_dir().join(format!("{}.{}.log", self.name, host.label))
    }

    fn data_dir(&self, host: &Host) -> std::path::PathBuf {
        let d = self.dir.path().join(&host.label);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn new(name: &str) -> World {
        let net = Net::new();
        let placeholder = net.host("client-1");
        World {
            procs: Vec::new(),
            master: placeholder.clone(),
            replicas: Vec::new(),
            sentinels: Vec::new(),
            nodes: Vec::new(),
            signers: Vec::new(),
            clients: vec![placeholder, net.host("client-2")],
            name: name.to_owned(),
            late_every: 0,
            _keys: common::keys_dir(),
            dir: tempfile::tempdir().unwrap(),
            net,
        }
    }

    /// Two vod-signer replicas on `url` with `extra` flags, SERVING as seen from a client.
    fn start_signers(&mut self, url: &str, extra: &[&str]) {
        for i in 1..=2 {
            let host = self.net.host(&format!("signer-{i}"));
            let mut args = vec!["--redis-url", url];
            args.extend(extra);
            let log = self.log(&host);
            self.procs
                .push(nodes::signer(&host, self._keys.path(), &log, &args));
            self.signers.push(host);
        }
        let endpoints: Vec<String> = self.signers.iter().map(nodes::endpoint).collect();
        self.clients[0].block_on(move || async move {
            for endpoint in endpoints {
                wait_serving(&endpoint, Duration::from_secs(20)).await;
            }
        });
    }

    /// A master, two replicas (with docs/redis.md's settings when `safe`), three sentinels, and
    /// two vod-signer replicas on `redis+sentinel://` (`--min-replicas-ack 1` when `safe`).
    fn sentinel(name: &str, safe: bool) -> World {
        let mut w = World::new(name);
        let settings: &[&str] = if safe {
            &nodes::SAFE_REDIS_SETTINGS
        } else {
            &[]
        };
        let group = nodes::sentinel_group(&w.net, settings, |host| (w.data_dir(host), w.log(host)));
        w.procs.extend(group.procs);
        (w.master, w.replicas, w.sentinels) = (group.master, group.replicas, group.sentinels);
        let url = group.url;
        let extra: &[&str] = if safe {
            &["--min-replicas-ack", "1"]
        } else {
            &[]
        };
        w.start_signers(&url, extra);
        w
    }

    /// Starts the load from both client hosts, each talking to both replicas.
    fn load(
        &self,
        t0: Instant,
        stop_issuing: Instant,
        give_up: Instant,
    ) -> Vec<std::thread::JoinHandle<Vec<Call>>> {
        let replicas: Vec<(String, String)> = self
            .signers
            .iter()
            .map(|h| (h.label.clone(), nodes::endpoint(h)))
            .collect();
        self.clients
            .iter()
            .map(|c| {
                drive(
                    c,
                    Load {
                        client: c.label.clone(),
                        replicas: replicas.clone(),
                        workers: WORKERS,
                        t0,
                        stop_issuing,
                        give_up,
                        call_timeout: CALL_TIMEOUT,
                        revoke_every: 5,
                        pause: PAUSE,
                        late_every: self.late_every,
                        late_by: Duration::from_secs(2),
                    },
                )
            })
            .collect()
    }

    /// Joins the load, writes the history, checks it, prints the figures.
    fn finish(
        &self,
        load: Vec<std::thread::JoinHandle<Vec<Call>>>,
        marks: Marks,
        notes: &str,
    ) -> Report {
        let mut calls = Vec::new();
        for l in load {
            calls.extend(l.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        let path = artifacts_dir().join(format!("{}.jsonl", self.name));
        history::write_jsonl(&path, &calls);
        let report = history::check(&calls, marks);
        println!(
            "[{}] fault at {:.2} s, healed at {:.2} s{notes}\n[{}] {}\n[{}] history: {}",
            self.name,
            marks.fault_ms / 1000.0,
            marks.healed_ms / 1000.0,
            self.name,
            report.summary(),
            self.name,
            path.display()
        );
        report
    }
}

/// Waits until the health service at `endpoint` says SERVING.
async fn wait_serving(endpoint: &str, within: Duration) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + within;
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(endpoint.to_owned())
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
        {
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await;
            if reply.is_ok_and(|r| r.into_inner().status == 1) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not SERVING within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(t0: Instant, at: Instant) -> f64 {
    (at - t0).as_secs_f64() * 1000.0
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// Polls the first sentinel that answers until it names a master other than `old`.
fn wait_promotion(w: &World, old: &Host, within: Duration) -> String {
    wait_for("the sentinels promote a replica", within, || {
        w.sentinels
            .iter()
            .find_map(|s| nodes::master_seen_by(s).filter(|m| *m != old.ip.to_string()))
    })
}

fn assert_clean(report: &Report) {
    let v = report.violations();
    assert!(v.is_empty(), "the history breaks the contract: {v:#?}");
    assert!(report.consumed > 50, "the load ran: {}", report.consumed);
}

/// Scenario 1: one vod-signer replica cannot reach the master for 10 s (both directions
/// dropped), then the path heals. The other replica serves throughout; the cut one answers
/// `STORE_UNAVAILABLE` (never hangs) and consumes again soon after the heal.
#[test]
fn black_hole_between_one_replica_and_the_master_for_10_s() {
    let w = World::sentinel("black-hole", true);
    let t0 = Instant::now();
    let (fault_at, heal_at) = (t0 + Duration::from_secs(3), t0 + Duration::from_secs(13));
    let stop = heal_at + 2 * recovery_budget();
    let load = w.load(t0, stop, stop + Duration::from_secs(10));
    sleep_until(fault_at);
    w.net.cut(&[&w.signers[0]], &[&w.master]);
    sleep_until(heal_at);
    w.net.heal();
    let marks = Marks {
        fault_ms: ms(t0, fault_at),
        healed_ms: ms(t0, heal_at),
    };
    let report = w.finish(load, marks, "");
    // Safety, and every owner served after the heal. How fast is a measurement (printed, and
    // in docs/faults.md): on a 2-core machine shared with other builds, a debug build took up to
    // 11 s where a release build takes 0.5-2 s, so no speed is asserted here.
    assert_clean(&report);
    assert!(
        report.recovery_ms.is_some(),
        "no consume succeeded after the heal"
    );
}

/// Split brain: the master and signer-1 are cut off from the sentinels, the replicas and
/// signer-2; the sentinels promote a replica; both sides keep receiving consumes (the clients
/// reach both replicas) for a while; then the partition heals.
fn split_brain(name: &str, safe: bool) -> Report {
    let mut w = World::sentinel(name, safe);
    // Signatures issued before the cut are presented on both sides during it.
    w.late_every = 3;
    let t0 = Instant::now();
    let fault_at = t0 + Duration::from_secs(3);
    let budget = failover_budget();
    let load = w.load(
        t0,
        t0 + Duration::from_secs(3) + budget + Duration::from_secs(6) + 2 * recovery_budget(),
        t0 + Duration::from_secs(3) + budget + Duration::from_secs(20) + 2 * recovery_budget(),
    );
    sleep_until(fault_at);
    let minority = [&w.master, &w.signers[0]];
    let mut majority: Vec<&Host> = w.sentinels.iter().chain(&w.replicas).collect();
    majority.push(&w.signers[1]);
    w.net.cut(&minority, &majority);
    let new_master = wait_promotion(&w, &w.master, budget);
    let promoted_at = Instant::now();
    // Both sides take consumes for a while after the promotion.
    sleep_until(promoted_at + Duration::from_secs(4));
    w.net.heal();
    let healed = Instant::now();
    let marks = Marks {
        fault_ms: ms(t0, fault_at),
        healed_ms: ms(t0, healed),
    };
    let notes = format!(
        "; {} promoted {:.2} s after the cut",
        new_master,
        (promoted_at - fault_at).as_secs_f64()
    );
    w.finish(load, marks, &notes)
}

/// Split brain with the safe settings (`--min-replicas-ack 1`, `min-replicas-to-write 1`):
/// nothing is accepted twice, nothing acknowledged is lost, every owner succeeds after the heal.
#[test]
fn split_brain_with_min_replicas_ack_accepts_nothing_twice() {
    let report = split_brain("split-brain-safe", true);
    assert_clean(&report);
    assert!(
        report.lost_records.is_empty(),
        "acknowledged records lost: {:?}",
        report.lost_records
    );
}

/// Split brain without them: measures how many signatures were accepted twice or lost (the
/// reason to use the safe settings). Fails nothing but the load running.
#[test]
#[ignore = "a measurement: run with --ignored (CI runs it after the suite)"]
fn split_brain_without_min_replicas_ack_measured() {
    let report = split_brain("split-brain-unsafe", false);
    println!(
        "[split-brain-unsafe] WITHOUT --min-replicas-ack / min-replicas-to-write: {} signatures \
         accepted twice ({} replays accepted), {} acknowledged records lost (the final audit \
         finds them not issued, or not consumed), {} owners never succeeded",
        report.double_accepts.len(),
        report.replays_accepted.len(),
        report.lost_records.len(),
        report.owners_stuck.len()
    );
    assert!(report.consumed > 50, "the load ran: {}", report.consumed);
}

/// The master's host goes dark for good; the sentinels fail over to a replica and both
/// vod-signer replicas follow. Owners retrying after the failover all succeed.
#[test]
#[ignore = "slow: run with --ignored (CI runs it after the suite)"]
fn master_host_goes_dark_for_good() {
    let w = World::sentinel("master-dark", true);
    let t0 = Instant::now();
    let fault_at = t0 + Duration::from_secs(3);
    let budget = failover_budget();
    let stop = fault_at + budget + Duration::from_secs(8);
    let load = w.load(t0, stop, stop + Duration::from_secs(10));
    sleep_until(fault_at);
    w.net.isolate(&w.master);
    let new_master = wait_promotion(&w, &w.master, budget);
    let promoted = Instant::now();
    let marks = Marks {
        fault_ms: ms(t0, fault_at),
        healed_ms: ms(t0, promoted),
    };
    let notes = format!(
        "; never healed: {} promoted {:.2} s after the master went dark (recovery counts from the promotion)",
        new_master,
        (promoted - fault_at).as_secs_f64()
    );
    let report = w.finish(load, marks, &notes);
    assert_clean(&report);
    assert!(report.lost_records.is_empty(), "{:?}", report.lost_records);
}

/// The CRC16 (XMODEM) Redis Cluster hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a signature's record (`vodsigner:sig:{secretId}:{random}`, no hash tag).
fn slot_of(sig: &str) -> u16 {
    crc16(format!("vodsigner:sig:{sig}").as_bytes()) % 16384
}

/// The slot ranges a node serves, from its `CLUSTER NODES` line.
fn slots_of(node_line: &str) -> Vec<(u16, u16)> {
    node_line
        .split_whitespace()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .map(|s| match s.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (s.parse().unwrap(), s.parse().unwrap()),
        })
        .collect()
}

/// Redis Cluster, 3 masters and 3 replicas: one master's host goes dark; the cluster fails
/// over to its replica. With `--min-replicas-ack 1` the other shards keep serving, while the
/// dark shard is unavailable until its old master is back as a replica (the promoted one has
/// none). Then the host comes back and every owner succeeds.
#[test]
#[ignore = "slow: run with --ignored (CI runs it after the suite)"]
fn cluster_master_goes_dark() {
    let mut w = World::new("cluster-dark");
    for i in 1..=6 {
        let host = w.net.host(&format!("node-{i}"));
        let (dir, log) = (w.data_dir(&host), w.log(&host));
        let timeout = nodes::CLUSTER_NODE_TIMEOUT.as_millis().to_string();
        w.procs.push(nodes::redis(
            &host,
            &dir,
            &log,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
                "--cluster-require-full-coverage",
                "no",
            ],
        ));
        w.nodes.push(host);
    }
    let mut create = w.nodes[0].command("redis-cli");
    create.args(["--cluster", "create"]);
    for n in &w.nodes {
        create.arg(format!("{}:{REDIS_PORT}", n.ip));
    }
    let out = create
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every node agrees the cluster is ok and sees 3 connected replicas.
    wait_for("the cluster forms", Duration::from_secs(30), || {
        let all_ok = w.nodes.iter().all(|n| {
            n.redis_cli(REDIS_PORT, &["CLUSTER", "INFO"])
                .unwrap_or_default()
                .contains("cluster_state:ok")
        });
        let linked = w
            .nodes
            .iter()
            .filter(|n| {
                n.redis_cli(REDIS_PORT, &["INFO", "replication"])
                    .unwrap_or_default()
                    .contains("connected_slaves:1")
            })
            .count();
        (all_ok && linked == 3).then_some(())
    });
    // The dark one: a master other than node-1 whose replica node-1 already knows (gossip
    // may take a moment to show it).
    let (victim_line, replica_line) = wait_for(
        "node-1 sees a master with its replica",
        Duration::from_secs(10),
        || {
            let table = w.nodes[0].redis_cli(REDIS_PORT, &["CLUSTER", "NODES"])?;
            table
                .lines()
                .filter(|l| l.contains("master") && !l.contains("myself"))
                .find_map(|m| {
                    let id = m.split_whitespace().next()?;
                    let r = table.lines().find(|l| l.contains(&format!("slave {id}")))?;
                    Some((m.to_owned(), r.to_owned()))
                })
        },
    );
    let victim_ip = victim_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let victim = w
        .nodes
        .iter()
        .find(|n| n.ip.to_string() == victim_ip)
        .unwrap()
        .clone();
    let replica_ip = replica_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let replica = w
        .nodes
        .iter()
        .find(|n| n.ip.to_string() == replica_ip)
        .unwrap()
        .clone();
    let dark_slots = slots_of(&victim_line);
    let url = format!(
        "redis+cluster://{}",
        w.nodes
            .iter()
            .map(|n| format!("{}:{REDIS_PORT}", n.ip))
            .collect::<Vec<_>>()
            .join(",")
    );
    w.start_signers(&url, &["--min-replicas-ack", "1"]);

    let t0 = Instant::now();
    let fault_at = t0 + Duration::from_secs(3);
    // The replica is promoted after the node timeout (plus its election delay, about a second).
    let failover_within = 2 * nodes::CLUSTER_NODE_TIMEOUT + Duration::from_secs(3);
    let dark_for = failover_within + Duration::from_secs(3);
    let stop = fault_at + dark_for + 2 * recovery_budget() + Duration::from_secs(5);
    let load = w.load(t0, stop, stop + Duration::from_secs(15));
    sleep_until(fault_at);
    w.net.isolate(&victim);
    wait_for("the replica is promoted", failover_within, || {
        replica
            .redis_cli(REDIS_PORT, &["ROLE"])
            .filter(|r| r.starts_with("master"))
    });
    let promoted = Instant::now();
    sleep_until(fault_at + dark_for);
    w.net.heal();
    let healed = Instant::now();
    let marks = Marks {
        fault_ms: ms(t0, fault_at),
        healed_ms: ms(t0, healed),
    };
    let notes = format!(
        "; {} dark, {} promoted {:.2} s after",
        victim.label,
        replica.label,
        (promoted - fault_at).as_secs_f64()
    );
    let mut calls = Vec::new();
    let report = {
        // Split the history by shard: the dark master's slots, and the rest.
        let report = w.finish(load, marks, &notes);
        let path = artifacts_dir().join(format!("{}.jsonl", w.name));
        calls.extend(history::read_jsonl(&path));
        report
    };
    let on_dark = |c: &&Call| {
        let slot = slot_of(&c.sig);
        dark_slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    };
    let (dark, rest): (Vec<Call>, Vec<Call>) = calls
        .iter()
        .filter(|c| !c.sig.is_empty())
        .cloned()
        .partition(|c| on_dark(&c));
    let dark_report = history::check(&dark, marks);
    let rest_report = history::check(&rest, marks);
    // An issue that failed has no signature, so it cannot be put on a shard: the dark shard
    // shows as a gap with no calls at all.
    println!(
        "[cluster-dark] the dark shard's signatures: longest gap {:.2} s; the other shards' \
         signatures: longest gap {:.2} s, STORE_UNAVAILABLE {}",
        dark_report.longest_gap.0 / 1000.0,
        rest_report.longest_gap.0 / 1000.0,
        rest_report.store_unavailable,
    );
    assert_clean(&report);
    assert!(report.lost_records.is_empty(), "{:?}", report.lost_records);
    // The other shards kept serving while one was dark.
    assert!(
        rest_report.longest_gap.0 < 3000.0,
        "the other shards stopped for {:.0} ms",
        rest_report.longest_gap.0
    );
}

/// The harness itself: a cut and a host gone dark are silence (a connect neither succeeds
/// nor is refused), a link taken down stops traffic too, a heal restores it, and dropping the
/// [`Net`] deletes its namespaces and the processes in them.
#[test]
fn the_harness_drops_silently_heals_and_cleans_up() {
    let net = Net::new();
    let (a, b) = (net.host("a"), net.host("b"));
    let dir = tempfile::tempdir().unwrap();
    let log = artifacts_dir().join("harness.b.log");
    let server = nodes::redis(&b, dir.path(), &log, &[]);
    let target = std::net::SocketAddr::from((b.ip, REDIS_PORT));
    // Within 300 ms: connected, refused/unreachable, or nothing at all (silence).
    let probe = |a: &Host| {
        a.spawn(move || {
            match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)) {
                Ok(_) => "connected",
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "silence",
                Err(_) => "error",
            }
        })
        .join()
        .unwrap()
    };
    assert_eq!(probe(&a), "connected");
    net.cut(&[&a], &[&b]);
    assert_eq!(probe(&a), "silence");
    net.heal();
    assert_eq!(probe(&a), "connected");
    net.isolate(&b);
    assert_eq!(probe(&a), "silence");
    net.heal();
    net.link(&b, false);
    assert_ne!(probe(&a), "connected");
    net.link(&b, true);
    wait_for("the link is back", Duration::from_secs(5), || {
        (probe(&a) == "connected").then_some(())
    });
    let names = [a.ns.clone(), b.ns.clone()];
    drop(server);
    drop(net);
    let list = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for name in names {
        assert!(!list.contains(&name), "{name} left behind: {list}");
    }
}
