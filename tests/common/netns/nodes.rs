//! The processes of a network fault scenario, each in its own host namespace: Redis nodes,
//! sentinels and `vod-signer serve` replicas (the real binary).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Host, Net, NsProcess, wait_for};

/// The port every Redis node listens on (each has its own address).
pub const REDIS_PORT: u16 = 6379;
/// The port every sentinel listens on.
pub const SENTINEL_PORT: u16 = 26379;
/// The port every vod-signer replica serves gRPC on.
pub const SIGNER_PORT: u16 = 50051;

/// Sentinel `down-after-milliseconds`: how long a master may be silent before a failover.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Sentinel `failover-timeout`.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(4000);
/// vod-signer `--store-timeout-ms`.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// vod-signer `--health-interval-ms`.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Redis Cluster `cluster-node-timeout`.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// docs/redis.md's recommended settings for `--min-replicas-ack 1` with Sentinel.
pub const SAFE_REDIS_SETTINGS: [&str; 4] = [
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "5",
];

/// Starts `redis-server` on `host` (`REDIS_PORT`, no persistence) with `extra` arguments,
/// data in `dir`, and waits for its PING.
pub fn redis(host: &Host, dir: &Path, log: &Path, extra: &[&str]) -> NsProcess {
    let mut cmd = host.command("redis-server");
    cmd.args(["--bind", &host.ip.to_string(), "127.0.0.1"])
        .args(["--port", &REDIS_PORT.to_string()])
        .args(["--protected-mode", "no", "--save", "", "--appendonly", "no"])
        .args(["--repl-diskless-sync-delay", "0"])
        .args(extra)
        .arg("--dir")
        .arg(dir);
    let process = NsProcess::spawn(host, cmd, log);
    wait_for(
        &format!("{} answers PING", host.label),
        Duration::from_secs(10),
        || (host.redis_cli(REDIS_PORT, &["PING"]).as_deref() == Some("PONG")).then_some(()),
    );
    process
}

/// Starts a sentinel on `host` watching `master` as `mymaster` (quorum 2).
pub fn sentinel(host: &Host, master: &Host, dir: &Path, log: &Path) -> NsProcess {
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {SENTINEL_PORT}\nbind {} 127.0.0.1\nprotected-mode no\ndir {}\n\
             sentinel monitor mymaster {} {REDIS_PORT} 2\n\
             sentinel down-after-milliseconds mymaster {}\n\
             sentinel failover-timeout mymaster {}\nsentinel parallel-syncs mymaster 1\n",
            host.ip,
            dir.display(),
            master.ip,
            DOWN_AFTER.as_millis(),
            FAILOVER_TIMEOUT.as_millis(),
        ),
    )
    .unwrap();
    let mut cmd = host.command("redis-server");
    cmd.arg(&conf).arg("--sentinel");
    let process = NsProcess::spawn(host, cmd, log);
    wait_for(
        &format!("{} answers PING", host.label),
        Duration::from_secs(10),
        || (host.redis_cli(SENTINEL_PORT, &["PING"]).as_deref() == Some("PONG")).then_some(()),
    );
    process
}

/// The master's address as `sentinel` reports it.
pub fn master_seen_by(sentinel: &Host) -> Option<String> {
    let out = sentinel.redis_cli(
        SENTINEL_PORT,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
    )?;
    out.lines().next().map(str::to_owned)
}

/// Starts `vod-signer serve` on `host` (the real binary) with `extra` arguments, and waits
/// until it logs that it serves.
pub fn signer(host: &Host, keys_dir: &Path, log: &Path, extra: &[&str]) -> NsProcess {
    let mut cmd: Command = host.command(env!("CARGO_BIN_EXE_vod-signer"));
    for (name, _) in std::env::vars() {
        if name.starts_with("VOD_SIGNER_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.arg("serve")
        .args(["--listen", &format!("{}:{SIGNER_PORT}", host.ip)])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--log-level", "info"])
        .arg("--keys-dir")
        .arg(keys_dir)
        .args(["--active-key", crate::common::SECRET_ID])
        .args([
            "--store-timeout-ms",
            &STORE_TIMEOUT.as_millis().to_string(),
            "--health-interval-ms",
            &HEALTH_INTERVAL.as_millis().to_string(),
        ])
        .args(extra);
    let mut process = NsProcess::spawn(host, cmd, log);
    process.wait_log("serving gRPC", Duration::from_secs(20));
    process
}

/// `http://IP:50051` of a vod-signer host.
pub fn endpoint(host: &Host) -> String {
    format!("http://{}:{SIGNER_PORT}", host.ip)
}

/// A master, two replicas and three sentinels watching them as `mymaster`, formed.
pub struct SentinelGroup {
    /// The processes (dropped with the group).
    pub procs: Vec<NsProcess>,
    /// The first master.
    pub master: Host,
    /// Its replicas.
    pub replicas: Vec<Host>,
    /// The sentinels.
    pub sentinels: Vec<Host>,
    /// `redis+sentinel://...` for vod-signer.
    pub url: String,
}

/// Starts a sentinel group on `net` with `settings` on each data node; `place` gives a host
/// its (data dir, log). Waits until the replicas are linked and the sentinels see them and
/// each other.
pub fn sentinel_group(
    net: &Net,
    settings: &[&str],
    mut place: impl FnMut(&Host) -> (std::path::PathBuf, std::path::PathBuf),
) -> SentinelGroup {
    let master = net.host("master");
    let (dir, log) = place(&master);
    let mut procs = vec![redis(&master, &dir, &log, settings)];
    let master_ip = master.ip.to_string();
    let mut replicas = Vec::new();
    for i in 1..=2 {
        let host = net.host(&format!("replica-{i}"));
        let mut args = settings.to_vec();
        args.extend(["--replicaof", &master_ip, "6379"]);
        let (dir, log) = place(&host);
        procs.push(redis(&host, &dir, &log, &args));
        replicas.push(host);
    }
    let mut sentinels = Vec::new();
    for i in 1..=3 {
        let host = net.host(&format!("sentinel-{i}"));
        let (dir, log) = place(&host);
        procs.push(sentinel(&host, &master, &dir, &log));
        sentinels.push(host);
    }
    wait_for("the sentinel group forms", Duration::from_secs(30), || {
        let s = &sentinels[0];
        let seen_replicas = s
            .redis_cli(SENTINEL_PORT, &["SENTINEL", "REPLICAS", "mymaster"])
            .unwrap_or_default();
        let seen_sentinels = s
            .redis_cli(SENTINEL_PORT, &["SENTINEL", "SENTINELS", "mymaster"])
            .unwrap_or_default();
        let linked = master
            .redis_cli(REDIS_PORT, &["INFO", "replication"])
            .unwrap_or_default()
            .contains("connected_slaves:2");
        (seen_replicas.matches("master-link-status\nok").count() == 2
            && seen_sentinels.matches("name").count() >= 2
            && linked)
            .then_some(())
    });
    let url = format!(
        "redis+sentinel://{}/mymaster",
        sentinels
            .iter()
            .map(|s| format!("{}:{SENTINEL_PORT}", s.ip))
            .collect::<Vec<_>>()
            .join(",")
    );
    SentinelGroup {
        procs,
        master,
        replicas,
        sentinels,
        url,
    }
}
