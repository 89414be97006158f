//! Watching what Redis does with memory, from `INFO` (which managed Redis allows where
//! `CONFIG` is disabled), on every master: its `maxmemory-policy`, `used_memory` against
//! `maxmemory`, `evicted_keys`, its `run_id` and how many keys it holds.
//!
//! Read every [`MEMORY_POLL`] (so `used_memory` at most once a second, the policy far more
//! often than every minute) and at once whenever the connector installs a new connection (a
//! first dial, a redial, a Sentinel failover). On Cluster, `INFO` goes to every master.
//! Callers read the outcome from atomics ([`RedisMemory::issue_gate`]), so the request path
//! never waits for `INFO`. Knows nothing of signatures: it says whether writes that grow memory
//! should stop, whether Redis may evict keys, and when a server came back without its keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::Value;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use tracing::{debug, error, info, warn};

use super::RedisConfig;
use super::connector::{Conn, Connector, Link, background_timeout};

/// How often `INFO` is read (and at once after every new connection).
pub const MEMORY_POLL: Duration = Duration::from_secs(1);

/// The only policy under which Redis never evicts a key.
const NOEVICTION: &str = "noeviction";

/// What `INFO` says of one master.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    /// `run_id`: new at every start of the server process.
    pub run_id: String,
    /// The major version (`redis_version`): script flags need 7.
    pub major_version: u32,
    /// `used_memory`, bytes.
    pub used_memory: u64,
    /// `maxmemory`, bytes; 0: no limit.
    pub maxmemory: u64,
    /// `maxmemory_policy`.
    pub policy: String,
    /// `evicted_keys`: keys evicted since the server started.
    pub evicted_keys: u64,
    /// Keys in all databases (`INFO keyspace`).
    pub keys: u64,
    /// `loading`: still reading its data from disk (the key count is not final).
    pub loading: bool,
}

impl NodeInfo {
    /// Reads an `INFO` reply (default sections); `None` when it has no `run_id`.
    pub fn parse(text: &str) -> Option<NodeInfo> {
        let mut node = NodeInfo::default();
        for line in text.lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            let number = || value.parse::<u64>().unwrap_or(0);
            match name {
                "run_id" => node.run_id = value.to_owned(),
                "redis_version" => {
                    node.major_version = value
                        .split('.')
                        .next()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0)
                }
                "used_memory" => node.used_memory = number(),
                "maxmemory" => node.maxmemory = number(),
                "maxmemory_policy" => node.policy = value.to_owned(),
                "evicted_keys" => node.evicted_keys = number(),
                "loading" => node.loading = value == "1",
                // `db0:keys=12,expires=12,avg_ttl=0`
                db if db.starts_with("db") && db[2..].bytes().all(|b| b.is_ascii_digit()) => {
                    node.keys += value
                        .split(',')
                        .find_map(|f| f.strip_prefix("keys="))
                        .and_then(|k| k.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                _ => {}
            }
        }
        (!node.run_id.is_empty()).then_some(node)
    }

    /// `used_memory / maxmemory`; 0 without a limit.
    fn ratio(&self) -> f64 {
        if self.maxmemory == 0 {
            0.0
        } else {
            self.used_memory as f64 / self.maxmemory as f64
        }
    }
}

/// A server that came back with far fewer keys than it held: restarted without persistence
/// (or from an old snapshot), or a failover to a replica that lacked the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reset {
    /// Which master (empty: the one server, or the Sentinel master).
    pub node: String,
    /// Keys it held at the last reading before.
    pub keys_before: u64,
    /// Keys it holds now.
    pub keys_after: u64,
}

/// What one reading of every master means.
#[derive(Clone, Debug, Default, PartialEq)]
struct Assessment {
    /// Masters whose policy may evict keys: (node, policy).
    evicting: Vec<(String, String)>,
    /// The fullest master: (node, used_memory, maxmemory); `None` when none has a limit.
    fullest: Option<(String, u64, u64)>,
    /// `used_memory / maxmemory` of the fullest master.
    ratio: f64,
    /// Whether a master is within the reserve of its `maxmemory`.
    full: bool,
    /// `evicted_keys` summed over the masters.
    evicted_keys: u64,
    /// Whether every master runs Redis 7 or later (script flags).
    script_flags: bool,
    /// Masters that came back without their keys.
    resets: Vec<Reset>,
    /// Masters whose `run_id` changed (a restart or a failover): (node, keys before, keys now).
    new_servers: Vec<(String, u64, u64)>,
}

/// Judges one reading against the last one seen of each master. A reset is a master whose
/// `run_id` changed (another server process) and that holds at most half the keys it held:
/// a plain reconnect keeps the `run_id`, and a failover to a replica or a restart from AOF
/// keeps the keys. A master still loading its data is not judged yet.
fn assess(
    known: &HashMap<String, NodeInfo>,
    now: &[(String, NodeInfo)],
    reserve: f64,
) -> Assessment {
    let mut a = Assessment {
        script_flags: !now.is_empty(),
        ..Assessment::default()
    };
    for (node, info) in now {
        if info.policy != NOEVICTION {
            a.evicting.push((node.clone(), info.policy.clone()));
        }
        a.evicted_keys += info.evicted_keys;
        a.script_flags &= info.major_version >= 7;
        if info.maxmemory > 0 && !info.loading {
            if info.ratio() >= a.ratio {
                a.ratio = info.ratio();
                a.fullest = Some((node.clone(), info.used_memory, info.maxmemory));
            }
            a.full |= info.used_memory as f64 >= info.maxmemory as f64 * (1.0 - reserve);
        }
        if info.loading {
            continue;
        }
        if let Some(before) = known.get(node)
            && before.run_id != info.run_id
        {
            a.new_servers.push((node.clone(), before.keys, info.keys));
            if before.keys > 0 && info.keys.saturating_mul(2) <= before.keys {
                a.resets.push(Reset {
                    node: node.clone(),
                    keys_before: before.keys,
                    keys_after: info.keys,
                });
            }
        }
    }
    a
}

/// What IssueSignature may do, as the last reading says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum IssueGate {
    /// Issue.
    Open = 0,
    /// A master is within the memory reserve of its `maxmemory`.
    Full = 1,
    /// A master's policy may evict records, and `--allow-evicting-redis` is not given.
    Evicting = 2,
}

/// What the watch knows, for the metrics and the messages (read off the request path).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryStatus {
    /// Whether `INFO` was read at least once.
    pub read: bool,
    /// `used_memory / maxmemory` of the fullest master (0 without a limit).
    pub ratio: f64,
    /// `used_memory` and `maxmemory` of the fullest master, bytes.
    pub used_memory: u64,
    /// See `used_memory`.
    pub maxmemory: u64,
    /// `evicted_keys`, summed over the masters (a counter of Redis: it restarts at 0 with it).
    pub evicted_keys: u64,
    /// Masters whose `maxmemory-policy` may evict keys: (node, policy); node empty for the
    /// one server (or the Sentinel master).
    pub evicting: Vec<(String, String)>,
    /// Resets seen since this process started (see [`Reset`]).
    pub resets: u64,
    /// The masters' `run_id`s at the last reading.
    pub run_ids: Vec<String>,
}

/// The memory watch of one Redis deployment: started by [`RedisMemory::watch`], read by the
/// store on every issue (one atomic load) and by health and metrics.
pub struct RedisMemory {
    gate: AtomicU8,
    /// Whether a master was within the reserve at the last reading (whatever the gate says).
    full: AtomicBool,
    script_flags: AtomicBool,
    /// Whether health may say SERVING as far as memory goes: false until the first answer to
    /// `INFO` (so a replica is not ready before its Redis' policy was seen) and while Redis
    /// may evict without `--allow-evicting-redis`.
    settled: AtomicBool,
    resets: AtomicU64,
    status: Mutex<MemoryStatus>,
    reserve: f64,
    allow_evicting: bool,
}

impl RedisMemory {
    /// Starts watching the Redis that `connector` reaches, with the reserve and policy rules
    /// of `config`.
    pub fn watch(connector: &Connector, config: &RedisConfig) -> Arc<RedisMemory> {
        let memory = Arc::new(RedisMemory {
            gate: AtomicU8::new(IssueGate::Open as u8),
            full: AtomicBool::new(false),
            script_flags: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            resets: AtomicU64::new(0),
            status: Mutex::new(MemoryStatus::default()),
            reserve: config.memory_reserve,
            allow_evicting: config.allow_evicting,
        });
        tokio::spawn(keep_watching(
            Arc::downgrade(&memory),
            connector.clone(),
            background_timeout(config.timeout),
        ));
        memory
    }

    /// What IssueSignature may do now.
    pub fn issue_gate(&self) -> IssueGate {
        match self.gate.load(Ordering::Relaxed) {
            1 => IssueGate::Full,
            2 => IssueGate::Evicting,
            _ => IssueGate::Open,
        }
    }

    /// Whether every master takes script flags (`#!lua flags=...`, Redis 7); false until
    /// known, so the flagless scripts, which every version runs, are used meanwhile.
    pub fn script_flags(&self) -> bool {
        self.script_flags.load(Ordering::Relaxed)
    }

    /// Why health must say NOT_SERVING although Redis answers; `None`: no reason.
    pub fn unsafe_to_serve(&self) -> Option<String> {
        if self.settled.load(Ordering::Relaxed) {
            return None;
        }
        let status = self.status();
        if !status.read {
            return Some("Redis' memory settings (INFO) were not read yet".into());
        }
        Some(self.evicting_message(&status))
    }

    /// What the watch knows now.
    pub fn status(&self) -> MemoryStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why issuing stopped for memory, for the refusal.
    pub fn full_message(&self) -> String {
        let s = self.status();
        format!(
            "Redis is within its memory reserve: {} of maxmemory {} used ({:.0} %; issuing stops \
             at {:.0} %, --redis-memory-reserve {}); consume, verify and revoke go on. Free memory \
             or raise maxmemory",
            mib(s.used_memory),
            mib(s.maxmemory),
            s.ratio * 100.0,
            (1.0 - self.reserve) * 100.0,
            self.reserve,
        )
    }

    /// Why issuing stopped for the policy, for the refusal and the log.
    pub fn evicting_message(&self, status: &MemoryStatus) -> String {
        let nodes: Vec<String> = status
            .evicting
            .iter()
            .map(|(node, policy)| match node.as_str() {
                "" => policy.clone(),
                node => format!("{policy} on {node}"),
            })
            .collect();
        format!(
            "Redis' maxmemory-policy is {} (not noeviction): it may evict signature records, \
             and their signatures would then be refused at upload. Set `maxmemory-policy \
             noeviction` on every master (CONFIG SET, redis.conf, or the managed service's \
             parameter group), or accept the risk with --allow-evicting-redis",
            nodes.join(", ")
        )
    }

    /// Takes in one reading; logs what changed.
    fn update(&self, a: &Assessment, run_ids: Vec<String>) {
        let before = self.status();
        for reset in &a.resets {
            self.resets.fetch_add(1, Ordering::Relaxed);
            error!(
                node = reset.node.as_str(),
                keys_before = reset.keys_before,
                keys_after = reset.keys_after,
                "Redis came back without its records (a new run_id and at most half the keys): \
                 restarted without persistence, or failed over to a replica that lacked the data. \
                 Every signature issued before is now refused SIGNATURE_NOT_ISSUED. Run Redis with \
                 AOF (appendfsync always) or with replicas and failover"
            );
        }
        for (node, keys_before, keys_after) in &a.new_servers {
            info!(
                node = node.as_str(),
                keys_before, keys_after, "Redis is another server process now (its run_id changed)"
            );
        }
        let status = MemoryStatus {
            read: true,
            ratio: a.ratio,
            used_memory: a.fullest.as_ref().map_or(0, |f| f.1),
            maxmemory: a.fullest.as_ref().map_or(0, |f| f.2),
            evicted_keys: a.evicted_keys,
            evicting: a.evicting.clone(),
            resets: self.resets.load(Ordering::Relaxed),
            run_ids,
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status.clone();
        let blocked = !a.evicting.is_empty() && !self.allow_evicting;
        let gate = if blocked {
            IssueGate::Evicting
        } else if a.full {
            IssueGate::Full
        } else {
            IssueGate::Open
        };
        self.script_flags.store(a.script_flags, Ordering::Relaxed);
        self.gate.store(gate as u8, Ordering::Relaxed);
        self.settled.store(!blocked, Ordering::Relaxed);

        if a.evicting != before.evicting || !before.read {
            match (a.evicting.is_empty(), self.allow_evicting) {
                (true, _) if before.evicting.is_empty() => {}
                (true, _) => info!("Redis' maxmemory-policy is noeviction again"),
                (false, false) => error!(
                    "{}; until then health is NOT_SERVING and IssueSignature is refused",
                    self.evicting_message(&status)
                ),
                (false, true) => warn!(
                    "{}; running anyway (--allow-evicting-redis): watch vodsigner_redis_evicted_keys",
                    self.evicting_message(&status)
                ),
            }
        }
        let was_full = self.full.swap(a.full, Ordering::Relaxed);
        if a.full && !was_full {
            warn!(
                used_memory = status.used_memory,
                maxmemory = status.maxmemory,
                "{}: IssueSignature is refused STORE_FULL until it has room",
                self.full_message()
            );
        } else if !a.full && was_full {
            info!(
                used_memory = status.used_memory,
                maxmemory = status.maxmemory,
                "Redis has room again: issuing resumes"
            );
        }
    }

    /// `INFO` cannot be read at all (denied to this user, or renamed away): nothing can be
    /// checked, so nothing is held back, and that is said once.
    fn unreadable(&self, e: &str) {
        if !self.settled.swap(true, Ordering::Relaxed) {
            error!(
                "cannot read Redis INFO ({e}): maxmemory-policy, memory use and resets are not \
                 watched; allow INFO for this Redis user"
            );
        }
    }
}

/// Bytes as MiB, for people.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Reads every master's `INFO` (default sections): `(node, reply)`, node empty for a single
/// connection. `Err` when no master could be asked.
async fn read_masters(conn: &Conn) -> Result<Vec<(String, Result<String, String>)>, String> {
    let info = redis::cmd("INFO");
    match conn.link() {
        Link::Node(node) => {
            let text = info
                .query_async::<String>(&mut node.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok(vec![(String::new(), Ok(text))])
        }
        Link::Cluster(cluster) => {
            let every_master = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            let reply = cluster
                .clone()
                .route_command(info, every_master)
                .await
                .map_err(|e| e.to_string())?;
            let Value::Map(nodes) = reply else {
                return Err(format!("unexpected INFO reply {reply:?}"));
            };
            Ok(nodes
                .into_iter()
                .map(|(node, text)| {
                    let node = redis::from_redis_value::<String>(node).unwrap_or_default();
                    let text = match text {
                        Value::ServerError(e) => Err(e.to_string()),
                        text => redis::from_redis_value::<String>(text).map_err(|e| e.to_string()),
                    };
                    (node, text)
                })
                .collect())
        }
    }
}

/// Whether an error means `INFO` will never be answered (not a passing failure).
fn is_refused(e: &str) -> bool {
    e.contains("NOPERM") || e.contains("unknown command")
}

async fn keep_watching(memory: Weak<RedisMemory>, connector: Connector, patience: Duration) {
    let mut installs = connector.installs();
    let mut known: HashMap<String, NodeInfo> = HashMap::new();
    loop {
        let Some(watch) = memory.upgrade() else {
            return;
        };
        if let Some(conn) = connector.get() {
            match tokio::time::timeout(patience, read_masters(&conn)).await {
                Ok(Ok(replies)) => {
                    let mut now = Vec::new();
                    for (node, reply) in replies {
                        match reply.map(|t| NodeInfo::parse(&t)) {
                            Ok(Some(info)) => now.push((node, info)),
                            Ok(None) => debug!(node, "INFO without run_id; skipped"),
                            Err(e) if is_refused(&e) => watch.unreadable(&e),
                            Err(e) => debug!(node, error = e, "INFO failed on a master"),
                        }
                    }
                    if !now.is_empty() {
                        let a = assess(&known, &now, watch.reserve);
                        let run_ids = now.iter().map(|(_, i)| i.run_id.clone()).collect();
                        watch.update(&a, run_ids);
                        // A master no longer listed is forgotten (it may come back much later as
                        // a replica's promotion, with other data); one that failed to answer or is
                        // still loading keeps its last reading to be judged against.
                        let listed: Vec<String> = now.iter().map(|(n, _)| n.clone()).collect();
                        known.retain(|node, _| listed.contains(node));
                        for (node, info) in now {
                            if !info.loading {
                                known.insert(node, info);
                            }
                        }
                    }
                }
                Ok(Err(e)) if is_refused(&e) => watch.unreadable(&e),
                Ok(Err(e)) => debug!(error = e, "INFO failed"),
                Err(_) => debug!("INFO did not answer within {} ms", patience.as_millis()),
            }
        }
        drop(watch);
        tokio::select! {
            () = tokio::time::sleep(MEMORY_POLL) => {}
            changed = installs.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(run_id: &str, keys: u64, used: u64, max: u64, policy: &str) -> NodeInfo {
        NodeInfo {
            run_id: run_id.into(),
            major_version: 7,
            used_memory: used,
            maxmemory: max,
            policy: policy.into(),
            evicted_keys: 0,
            keys,
            loading: false,
        }
    }

    #[test]
    fn parses_the_fields_of_an_info_reply() {
        let text = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n\r\n# Memory\r\n\
                    used_memory:1048576\r\nmaxmemory:3145728\r\nmaxmemory_policy:allkeys-lru\r\n\
                    # Persistence\r\nloading:0\r\n# Stats\r\nevicted_keys:42\r\n\
                    # Keyspace\r\ndb0:keys=10,expires=9,avg_ttl=100\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n";
        assert_eq!(
            NodeInfo::parse(text),
            Some(NodeInfo {
                run_id: "abc123".into(),
                major_version: 7,
                used_memory: 1_048_576,
                maxmemory: 3_145_728,
                policy: "allkeys-lru".into(),
                evicted_keys: 42,
                keys: 15,
                loading: false,
            })
        );
        assert_eq!(NodeInfo::parse("# Server\r\nredis_version:6.2.1\r\n"), None);
        let six = NodeInfo::parse("redis_version:6.2.14\r\nrun_id:x\r\n").unwrap();
        assert_eq!(six.major_version, 6);
    }

    #[test]
    fn within_the_reserve_is_full_and_the_fullest_master_counts() {
        let known = HashMap::new();
        let one = |used| vec![(String::new(), node("a", 1, used, 1000, NOEVICTION))];
        assert!(!assess(&known, &one(899), 0.1).full);
        assert!(assess(&known, &one(900), 0.1).full);
        assert_eq!(assess(&known, &one(900), 0.1).ratio, 0.9);
        // No limit: never full, ratio 0.
        let unlimited = vec![(String::new(), node("a", 1, 5000, 0, NOEVICTION))];
        let a = assess(&known, &unlimited, 0.1);
        assert!(!a.full);
        assert_eq!(a.ratio, 0.0);
        assert_eq!(a.fullest, None);
        // Cluster: the worst master decides.
        let masters = vec![
            ("n1:7000".to_owned(), node("a", 1, 100, 1000, NOEVICTION)),
            ("n2:7001".to_owned(), node("b", 1, 950, 1000, NOEVICTION)),
            ("n3:7002".to_owned(), node("c", 1, 10, 0, NOEVICTION)),
        ];
        let a = assess(&known, &masters, 0.1);
        assert!(a.full);
        assert_eq!(a.fullest, Some(("n2:7001".into(), 950, 1000)));
        assert!(!assess(&known, &masters, 0.01).full);
    }

    #[test]
    fn any_policy_but_noeviction_is_evicting() {
        let known = HashMap::new();
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "volatile-ttl",
            "allkeys-random",
        ] {
            let masters = vec![
                ("n1:7000".to_owned(), node("a", 1, 1, 0, NOEVICTION)),
                ("n2:7001".to_owned(), node("b", 1, 1, 0, policy)),
            ];
            assert_eq!(
                assess(&known, &masters, 0.1).evicting,
                [("n2:7001".to_owned(), policy.to_owned())]
            );
        }
        let fine = vec![(String::new(), node("a", 1, 1, 0, NOEVICTION))];
        assert!(assess(&known, &fine, 0.1).evicting.is_empty());
    }

    #[test]
    fn a_reset_is_a_new_run_id_that_lost_the_keys() {
        let known: HashMap<String, NodeInfo> =
            [(String::new(), node("old", 1000, 1, 0, NOEVICTION))].into();
        let now = |run_id: &str, keys| vec![(String::new(), node(run_id, keys, 1, 0, NOEVICTION))];
        // Restarted empty (a few issues already arrived): a reset.
        let a = assess(&known, &now("new", 3), 0.1);
        assert_eq!(
            a.resets,
            [Reset {
                node: String::new(),
                keys_before: 1000,
                keys_after: 3
            }]
        );
        assert_eq!(a.new_servers, [(String::new(), 1000, 3)]);
        // A plain reconnect to the same process, even after many keys expired: none.
        assert!(assess(&known, &now("old", 0), 0.1).resets.is_empty());
        // A failover to a replica that has the data, or a restart from AOF: none.
        let a = assess(&known, &now("replica", 990), 0.1);
        assert!(a.resets.is_empty());
        assert_eq!(a.new_servers.len(), 1);
        // Still loading its AOF: not judged yet.
        let mut loading = node("new", 10, 1, 0, NOEVICTION);
        loading.loading = true;
        assert!(
            assess(&known, &[(String::new(), loading)], 0.1)
                .resets
                .is_empty()
        );
        // Nothing was held, nothing was lost.
        let empty: HashMap<String, NodeInfo> =
            [(String::new(), node("old", 0, 1, 0, NOEVICTION))].into();
        assert!(assess(&empty, &now("new", 0), 0.1).resets.is_empty());
        // A Cluster master never seen before (a promoted replica) is not judged.
        let other = vec![("n9:7009".to_owned(), node("x", 0, 1, 0, NOEVICTION))];
        assert!(assess(&known, &other, 0.1).resets.is_empty());
    }

    #[test]
    fn script_flags_need_redis_7_on_every_master() {
        let known = HashMap::new();
        let mut six = node("b", 1, 1, 0, NOEVICTION);
        six.major_version = 6;
        let mixed = vec![
            ("n1".to_owned(), node("a", 1, 1, 0, NOEVICTION)),
            ("n2".to_owned(), six),
        ];
        assert!(!assess(&known, &mixed, 0.1).script_flags);
        assert!(assess(&known, &mixed[..1], 0.1).script_flags);
        assert!(!assess(&known, &[], 0.1).script_flags);
    }
}
