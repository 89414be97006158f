//! Following a Sentinel-managed master: where it is, and which replicas could replace it.
//!
//! The redis crate's Sentinel client follows neither a failover nor a dead connection by
//! itself, so the sentinels are asked every second (and at once when a call says `READONLY`,
//! keeps timing out, or finds the master short of replicas, as the old master of a failover
//! is): `SENTINEL GET-MASTER-ADDR-BY-NAME` and `SENTINEL REPLICAS` in one
//! round trip. With `--min-replicas-ack`, writes wait for every replica the sentinels could
//! promote, counted per master (see [`promotable`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};
use tracing::{debug, info, warn};

use super::RedisSettings;
use super::connection::{Link, wait_bound};
use super::connector::{MIN_REDIAL_GAP, Shared};
use super::dial::{background_timeout, dial, node_client, tcp_addr, tcp_settings, tls_certs};
use super::error::Error;

/// How often the sentinels are asked where the master is and which replicas it has.
const SENTINEL_POLL: Duration = Duration::from_secs(1);
/// The shortest pause between two asks when calls report missing replicas
/// ([`super::Failure::NoReplicas`]): a failover is followed within it, and a master that
/// lost its replicas for good does not have every service replica ask ten times a second.
const MIN_ASK_GAP: Duration = Duration::from_millis(100);

/// Starts following the master `name` that the `sentinels` watch.
pub(super) fn start_sentinel(
    sentinels: Vec<(String, u16)>,
    name: String,
    db: i64,
    tls: bool,
    config: &RedisSettings,
    shared: Arc<Shared>,
) -> Result<(), Error> {
    let clients = sentinels
        .into_iter()
        .map(|(host, port)| {
            let info = tcp_addr(host, port, tls).into_connection_info()?;
            let info = info.set_tcp_settings(tcp_settings());
            match tls_certs(config) {
                Some(certs) if tls => Client::build_with_tls(info, certs),
                _ => Client::open(info),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Settings {
            what: "sentinel",
            source,
        })?;
    let group = SentinelGroup {
        sentinels: clients.into_iter().map(|c| (c, None)).collect(),
        name,
        db,
        tls,
        config: config.clone(),
    };
    let keeper = keep_sentinel_master(group, shared.clone());
    shared.spawn_while_owned(keeper);
    Ok(())
}

/// The sentinels of one master, and how to reach its data nodes.
struct SentinelGroup {
    /// Each sentinel's client and its open connection, if any.
    sentinels: Vec<(Client, Option<MultiplexedConnection>)>,
    name: String,
    db: i64,
    tls: bool,
    config: RedisSettings,
}

/// What one sentinel says of the master.
struct SentinelView {
    master: (String, u16),
    /// Replicas it could promote: up, linked to their master, priority above 0.
    promotable: u32,
}

impl SentinelGroup {
    /// Asks the sentinels in turn; the first that answers is believed (as Redis' own clients
    /// do). It is moved to the front, so the next poll asks it first.
    async fn ask(&mut self, timeout: Duration) -> Option<SentinelView> {
        for i in 0..self.sentinels.len() {
            match self.ask_one(i, timeout).await {
                Ok(view) => {
                    self.sentinels[..=i].rotate_right(1);
                    return Some(view);
                }
                Err(e) => {
                    self.sentinels[i].1 = None;
                    debug!(sentinel = i, "sentinel did not answer: {e}");
                }
            }
        }
        None
    }

    async fn ask_one(&mut self, i: usize, timeout: Duration) -> Result<SentinelView, Error> {
        let (client, open) = &mut self.sentinels[i];
        let conn = match open {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                open.insert(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.name)
            .cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(&self.name);
        let (master, replicas): (Option<(String, u16)>, Vec<ReplicaFields>) =
            tokio::time::timeout(timeout, pipe.query_async(conn))
                .await
                .map_err(|_| Error::Timeout {
                    what: "no answer",
                    after: timeout,
                })??;
        let master = master.ok_or_else(|| Error::UnknownMaster(self.name.clone()))?;
        let master_name = format!("{}:{}", master.0, master.1);
        let promotable = replicas
            .iter()
            .filter(|r| r.get("name") != Some(&master_name) && promotable(r))
            .count() as u32;
        Ok(SentinelView { master, promotable })
    }

    fn master_client(&self, (host, port): (String, u16)) -> Result<Client, Error> {
        let info = tcp_addr(host, port, self.tls).into_connection_info()?;
        let settings = info.redis_settings().clone().set_db(self.db);
        node_client(info.set_redis_settings(settings), &self.config)
    }
}

/// One replica as `SENTINEL REPLICAS` describes it: field name to value.
type ReplicaFields = HashMap<String, String>;

/// Whether a sentinel could promote this replica (`SENTINEL REPLICAS` fields): it is not
/// down, its link to its master is up, and its priority allows it. A replica being promoted
/// right now still counts until the sentinels name it the master: until then the service
/// writes to the old master, and the write must reach the replica that takes over.
fn promotable(replica: &ReplicaFields) -> bool {
    let flags = replica.get("flags").map_or("", String::as_str);
    if flags.split(',').any(|f| f == "promoted") {
        // The failover's chosen one: whatever its link looks like (the sentinel's own link
        // to it is cut as it is promoted, so it shows `disconnected` for a moment), it is the
        // next master, and a write the old master acknowledges without it is lost.
        return true;
    }
    let down = flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
    let linked = replica.get("master-link-status").map(String::as_str) == Some("ok");
    let priority = replica.get("slave-priority").map(String::as_str);
    !down && linked && priority != Some("0")
}

/// Asks the sentinels every second (and at once when told) where the master is and which
/// replicas could replace it. Switches to a new connection when the master moved, and also
/// when calls on the current one keep timing out although the address is the same (the redis
/// crate's Sentinel client follows neither by itself).
async fn keep_sentinel_master(mut group: SentinelGroup, shared: Arc<Shared>) {
    let timeout = group.config.timeout;
    let ask_timeout = background_timeout(timeout);
    let mut master: Option<(String, u16)> = None;
    // The current master's promotable replicas; a new master gets a counter of its own.
    let mut promotable = Arc::new(AtomicU32::new(0));
    let mut redial = false;
    let mut dial_failed = false;
    let mut last_dial = tokio::time::Instant::now();
    loop {
        let asked = tokio::time::Instant::now();
        match group.ask(ask_timeout).await {
            Some(view) => {
                let moved = master.as_ref() != Some(&view.master);
                if !moved {
                    let before = promotable.swap(view.promotable, Ordering::Relaxed);
                    if before != view.promotable {
                        info!(master = %group.name, promotable_replicas = view.promotable, "replicas that a failover could promote (each must acknowledge writes)");
                    }
                }
                if moved || redial {
                    let dialled = match group.master_client(view.master.clone()) {
                        Ok(client) => dial(&client, timeout).await,
                        Err(e) => Err(e),
                    };
                    match dialled {
                        Ok(conn) => {
                            let (host, port) = &view.master;
                            if moved {
                                info!(master = %group.name, addr = %format!("{host}:{port}"), promotable_replicas = view.promotable, "Redis master (from the sentinels)");
                            } else {
                                warn!(master = %group.name, "the connection to the Redis master stopped answering: dialled a new one");
                            }
                            if moved {
                                promotable = Arc::new(AtomicU32::new(view.promotable));
                            }
                            shared.install(
                                Link::Node(conn.clone()),
                                promotable.clone(),
                                wait_bound(timeout),
                            );
                            if moved && group.config.min_replicas_ack > 0 {
                                check_sync_delay(conn, &group.name, ask_timeout).await;
                            }
                            master = Some(view.master);
                            last_dial = tokio::time::Instant::now();
                        }
                        Err(e) => {
                            warn!("cannot connect to the Redis master: {e}");
                            // Again at the next poll, even if the sentinels name the same one.
                            dial_failed = true;
                        }
                    }
                }
            }
            None => warn!(master = %group.name, "no sentinel answered in time"),
        }
        let told = tokio::select! {
            () = tokio::time::sleep(SENTINEL_POLL) => false,
            () = shared.redial.notified() => true,
            () = shared.ask.notified() => {
                // Calls lack replicas (a failover moving them, most likely): ask again
                // soon, but not more often than this, however many calls say so.
                tokio::time::sleep_until(asked + MIN_ASK_GAP).await;
                false
            }
        };
        redial = told || std::mem::take(&mut dial_failed);
        if told && !shared.take_urgent() {
            // Timeouts: at most one redial per gap (the connection may be fine and Redis
            // merely slow); a broken connection is redialled at once.
            tokio::time::sleep_until(last_dial + MIN_REDIAL_GAP).await;
        }
    }
}

/// With `--min-replicas-ack`, a failover stops every write until the new master has an
/// online replica, and the replica left with it usually needs a full sync (it took writes
/// from the old master that the promoted one never saw). A diskless full sync first waits
/// `repl-diskless-sync-delay` (Redis' default: 5 s): measured, 5.6-6.1 s without a write
/// instead of about 1 s (`tests/failover_gap.rs`). Warns when a new master has it; says
/// nothing where `CONFIG` is denied (managed Redis often disables it).
async fn check_sync_delay(mut conn: MultiplexedConnection, name: &str, timeout: Duration) {
    let mut get = redis::cmd("CONFIG");
    // One pattern, as Redis 6 takes: `repl-diskless-sync`, `-delay`, `-max-replicas`.
    get.arg("GET").arg("repl-diskless-sync*");
    let settings = match tokio::time::timeout(
        timeout,
        get.query_async::<HashMap<String, String>>(&mut conn),
    )
    .await
    {
        Ok(Ok(settings)) => settings,
        Ok(Err(e)) => {
            debug!("cannot read the master's repl-diskless-sync settings: {e}");
            return;
        }
        Err(_) => {
            debug!("the master's repl-diskless-sync settings: no answer in time");
            return;
        }
    };
    let diskless = settings.get("repl-diskless-sync").map(String::as_str) == Some("yes");
    let delay = settings
        .get("repl-diskless-sync-delay")
        .and_then(|d| d.parse::<u64>().ok())
        .unwrap_or(0);
    if diskless && delay > 0 {
        warn!(
            master = %name,
            repl_diskless_sync_delay = delay,
            "the Redis master delays a replica's full sync by repl-diskless-sync-delay {delay} s: \
             after a failover, writes wait for a replica (--min-replicas-ack), so every issue \
             and consume fails that much longer. Set repl-diskless-sync-delay 0 on every data \
             node (docs/redis.md)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(flags: &str, link: &str, priority: &str) -> ReplicaFields {
        [
            ("flags", flags),
            ("master-link-status", link),
            ("slave-priority", priority),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn a_replica_counts_when_it_could_be_promoted() {
        assert!(promotable(&replica("slave", "ok", "100")));
        assert!(!promotable(&replica("slave", "err", "100")));
        assert!(!promotable(&replica("slave,s_down", "ok", "100")));
        assert!(!promotable(&replica("slave,disconnected", "ok", "100")));
        assert!(!promotable(&replica("slave", "ok", "0")));
        // Seen in a forced failover: the chosen replica is `disconnected` for a moment as the
        // sentinel cuts its own link while promoting it. It must still count, or the old
        // master acknowledges writes that only the other replica has, and both lose them.
        assert!(promotable(&replica(
            "slave,disconnected,promoted",
            "ok",
            "100"
        )));
        assert!(promotable(&replica("slave,promoted", "err", "100")));
    }
}
