//! Reading `INFO` of every master (which managed Redis allows where `CONFIG` is disabled),
//! and judging a reading against the one before: how full the fullest master is, whether a
//! policy may evict keys, and whether a server came back without its keys.
//!
//! Pure but for [`read_masters`], so the judgement is tested without a server; the memory
//! watch decides what to do about it.

use std::collections::HashMap;

use redis::Value;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};

use super::connection::{Conn, Link};
use super::error::Error;

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
pub(super) struct Assessment {
    /// Masters whose policy may evict keys: (node, policy).
    pub(super) evicting: Vec<(String, String)>,
    /// The fullest master: (node, used_memory, maxmemory); `None` when none has a limit.
    pub(super) fullest: Option<(String, u64, u64)>,
    /// `used_memory / maxmemory` of the fullest master.
    pub(super) ratio: f64,
    /// Whether a master is within the reserve of its `maxmemory`.
    pub(super) full: bool,
    /// `evicted_keys` summed over the masters.
    pub(super) evicted_keys: u64,
    /// Whether every master runs Redis 7 or later (script flags).
    pub(super) script_flags: bool,
    /// Masters that came back without their keys.
    pub(super) resets: Vec<Reset>,
    /// Masters whose `run_id` changed (a restart or a failover): (node, keys before, keys now).
    pub(super) new_servers: Vec<(String, u64, u64)>,
}

/// Judges one reading against the last one seen of each master. A reset is a master whose
/// `run_id` changed (another server process) and that holds at most half the keys it held:
/// a plain reconnect keeps the `run_id`, and a failover to a replica or a restart from AOF
/// keeps the keys. A master still loading its data is not judged yet.
pub(super) fn assess(
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

/// One master's `INFO` text, or why it did not answer.
pub(super) type Reply = Result<String, Error>;

/// Reads every master's `INFO` (default sections): `(node, reply)`, node empty for a single
/// connection. `Err` when no master could be asked.
pub(super) async fn read_masters(conn: &Conn) -> Result<Vec<(String, Reply)>, Error> {
    let info = redis::cmd("INFO");
    match conn.link() {
        Link::Node(node) => {
            let text = info.query_async::<String>(&mut node.clone()).await?;
            Ok(vec![(String::new(), Ok(text))])
        }
        Link::Cluster(cluster) => {
            let every_master = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            let reply = cluster.clone().route_command(info, every_master).await?;
            let Value::Map(nodes) = reply else {
                return Err(Error::UnexpectedReply {
                    command: "INFO",
                    reply: format!("{reply:?}"),
                });
            };
            Ok(nodes
                .into_iter()
                .map(|(node, text)| {
                    let node = redis::from_redis_value::<String>(node).unwrap_or_default();
                    let text = match text {
                        Value::ServerError(e) => Err(Error::Redis(e.into())),
                        text => redis::from_redis_value::<String>(text).map_err(Error::from),
                    };
                    (node, text)
                })
                .collect())
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
