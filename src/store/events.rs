//! Events in a Redis Stream, `{prefix}events`, capped with `MAXLEN ~ N`.
//!
//! Publishing hands the event to a writer task that pipelines `XADD`s in batches, off the
//! request path; if Redis is away and the queue fills, events are dropped and counted rather
//! than slowing or failing calls. Watchers poll `XREAD` (not `XREAD BLOCK`, which would stall
//! the shared multiplexed connection), so an event reaches them within about 200 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use super::topology::Connector;
use crate::events::{Event, EventKind, EventLog, EventStream};

const QUEUE: usize = 8192;
const BATCH: usize = 256;
const POLL: Duration = Duration::from_millis(200);

/// Events in a Redis Stream shared by all replicas.
pub struct RedisEvents {
    connector: Connector,
    key: String,
    timeout: Duration,
    queue: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl RedisEvents {
    /// Starts the writer for stream `key`, capped at about `maxlen` entries.
    pub(super) fn start(
        connector: Connector,
        key: String,
        maxlen: u64,
        timeout: Duration,
    ) -> RedisEvents {
        let (queue, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write(
            connector.clone(),
            key.clone(),
            maxlen,
            timeout,
            rx,
            dropped.clone(),
        ));
        RedisEvents {
            connector,
            key,
            timeout,
            queue,
            dropped,
        }
    }

    /// Events dropped so far (queue full or Redis unavailable).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write(
    connector: Connector,
    key: String,
    maxlen: u64,
    timeout: Duration,
    mut rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for e in &batch {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(maxlen)
                .arg("*")
                .arg("kind")
                .arg(e.kind.as_str())
                .arg("secret_id")
                .arg(&e.secret_id)
                .arg("random")
                .arg(e.random)
                .arg("subject")
                .arg(&e.subject)
                .arg("source_context")
                .arg(&e.source_context)
                .arg("reason")
                .arg(&e.reason)
                .arg("time")
                .arg(e.time)
                .ignore();
        }
        let written = match connector.get() {
            Some(mut conn) => matches!(
                tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        if !written {
            let total =
                dropped.fetch_add(batch.len() as u64, Ordering::Relaxed) + batch.len() as u64;
            warn!(
                events = batch.len(),
                dropped_total = total,
                "could not write audit events to Redis; dropped"
            );
        }
        batch.clear();
    }
}

fn field(map: &std::collections::HashMap<String, redis::Value>, name: &str) -> String {
    map.get(name)
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .unwrap_or_default()
}

impl EventLog for RedisEvents {
    fn publish(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn watch(&self, start_id: &str) -> Result<EventStream, String> {
        let valid = start_id.is_empty()
            || start_id
                .split('-')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && start_id.split('-').count() <= 2;
        if !valid {
            return Err(format!(
                "start_id {start_id:?} is not a stream id (like 1795560000000-0), \"0\" or empty"
            ));
        }
        let (tx, rx) = mpsc::channel(256);
        let (connector, key, timeout) = (self.connector.clone(), self.key.clone(), self.timeout);
        let start = start_id.to_owned();
        tokio::spawn(async move {
            let mut last: Option<String> = (!start.is_empty()).then_some(start);
            loop {
                if tx.is_closed() {
                    return;
                }
                let Some(mut conn) = connector.get() else {
                    tokio::time::sleep(POLL).await;
                    continue;
                };
                // "From now": the newest id at the start.
                let from = match &last {
                    Some(id) => id.clone(),
                    None => {
                        let mut newest = redis::cmd("XREVRANGE");
                        newest.arg(&key).arg("+").arg("-").arg("COUNT").arg(1);
                        match tokio::time::timeout(
                            timeout,
                            newest.query_async::<redis::streams::StreamRangeReply>(&mut conn),
                        )
                        .await
                        {
                            Ok(Ok(reply)) => {
                                let id = reply
                                    .ids
                                    .first()
                                    .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
                                last = Some(id.clone());
                                id
                            }
                            _ => {
                                tokio::time::sleep(POLL).await;
                                continue;
                            }
                        }
                    }
                };
                let mut read = redis::cmd("XREAD");
                read.arg("COUNT")
                    .arg(BATCH)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&from);
                let reply = tokio::time::timeout(
                    timeout,
                    read.query_async::<Option<StreamReadReply>>(&mut conn),
                )
                .await;
                let entries = match reply {
                    Ok(Ok(Some(reply))) => reply
                        .keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .collect::<Vec<_>>(),
                    Ok(Ok(None)) => Vec::new(),
                    _ => Vec::new(),
                };
                let full = entries.len() == BATCH;
                for entry in entries {
                    last = Some(entry.id.clone());
                    let Some(kind) = EventKind::parse(&field(&entry.map, "kind")) else {
                        continue;
                    };
                    let event = Event {
                        kind,
                        secret_id: field(&entry.map, "secret_id"),
                        random: field(&entry.map, "random").parse().unwrap_or(0),
                        subject: field(&entry.map, "subject"),
                        source_context: field(&entry.map, "source_context"),
                        reason: field(&entry.map, "reason"),
                        time: field(&entry.map, "time").parse().unwrap_or(0),
                    };
                    if tx.send((entry.id, event)).await.is_err() {
                        return;
                    }
                }
                if !full {
                    tokio::time::sleep(POLL).await;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
