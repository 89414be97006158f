//! Real Redis topologies on loopback: a Redis Cluster, and a Sentinel group (master, replica,
//! three sentinels). Every process is killed when its owner is dropped.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::RedisServer;

/// A free port whose cluster-bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = super::free_port();
        if port < 55_000 && StdListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of `masters` nodes, no replicas, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, joins them, waits for `cluster_state:ok`.
    pub fn start(masters: usize, persistent: bool) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters {
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "3000",
            ];
            if persistent {
                args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
            }
            // Another port pair is picked when this one turns out taken.
            nodes.push(RedisServer::start_configured_picking(
                free_cluster_port,
                &args,
                &[],
            ));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            while !node
                .cli(&["CLUSTER", "INFO"])
                .unwrap_or_default()
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `redis+cluster://` URL with every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The node id of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        self.nodes[i].cli(&["CLUSTER", "MYID"]).unwrap()
    }

    /// How many keys the whole cluster holds.
    pub fn dbsize(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                n.cli(&["DBSIZE"])
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// `redis-cli` against the sentinel on `port`.
fn sentinel_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// One `redis-server --sentinel` process.
pub struct Sentinel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        for attempt in 1..=super::PORT_ATTEMPTS {
            let port = super::free_port();
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\nsentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 4000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel");
            // Its own process must be the one answering: the port may have been taken.
            let answered =
                super::wait_own_server(&mut child, port, super::REDIS_START_TIMEOUT, |args| {
                    sentinel_cli(port, args)
                });
            match answered {
                Ok(()) => {
                    return Sentinel {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(attempt < super::PORT_ATTEMPTS, "starting a sentinel: {e}");
                    eprintln!("sentinel: {e}; trying another port");
                }
            }
        }
        unreachable!()
    }

    /// `redis-cli` against this sentinel.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        sentinel_cli(self.port, args)
    }

    /// What it logged so far (its failover steps: votes, promotion, reconfigured replicas).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// The port of the master this sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])?;
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master, two replicas, and three sentinels watching them as `mymaster`: the shape to run
/// with `--min-replicas-ack 1` (after a failover the new master still has a replica).
pub struct SentinelGroup {
    pub master: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelGroup {
    /// Starts the group and waits until the master has both replicas and the sentinels see
    /// them linked (so they count as promotable).
    pub fn start() -> SentinelGroup {
        SentinelGroup::start_with(&[])
    }

    /// [`SentinelGroup::start`] with `extra` arguments for every data node, after (so
    /// overriding) the recommended ones.
    pub fn start_with(extra: &[&str]) -> SentinelGroup {
        // docs/redis.md's recommended settings: a master that lost every replica stops taking
        // writes (split brain), and a replica resyncing after a failover is not held back 5 s
        // by the diskless-sync delay.
        let mut recommended = vec![
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "5",
            "--repl-diskless-sync-delay",
            "0",
        ];
        recommended.extend(extra);
        let master = RedisServer::start_configured(&recommended, &[]);
        let replica_of = master.port.to_string();
        let replicas: Vec<RedisServer> = (0..2)
            .map(|_| {
                let mut args = recommended.to_vec();
                args.extend(["--replicaof", "127.0.0.1", &replica_of]);
                RedisServer::start_configured(&args, &[])
            })
            .collect();
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master.port)).collect();
        let group = SentinelGroup {
            master,
            replicas,
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replicas = group.sentinels[0]
                .cli(&["SENTINEL", "REPLICAS", "mymaster"])
                .unwrap_or_default();
            let sentinels = group.sentinels[0]
                .cli(&["SENTINEL", "SENTINELS", "mymaster"])
                .unwrap_or_default();
            let linked = group
                .master
                .cli(&["INFO", "replication"])
                .unwrap_or_default()
                .contains("connected_slaves:2");
            if replicas.matches("master-link-status\nok").count() == 2
                && sentinels.matches("name").count() >= 2
                && linked
            {
                break;
            }
            assert!(Instant::now() < deadline, "the sentinel group did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
        group
    }

    /// `redis+sentinel://` URL naming every sentinel.
    pub fn url(&self) -> String {
        let s: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/mymaster", s.join(","))
    }
}
