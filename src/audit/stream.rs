//! Events in a Redis Stream, `{prefix}events`, capped with `MAXLEN ~ N`.
//!
//! Publishing hands the event to a writer task that pipelines `XADD`s in batches, off the
//! request path; if Redis is away and the queue fills, events are dropped and counted rather
//! than slowing or failing calls. Watchers poll `XREAD` (not `XREAD BLOCK`, which would stall
//! the shared multiplexed connection), so an event reaches them within about 200 ms.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use super::{Event, EventFuture, EventLog, EventStream, WatchError};
use crate::fold::LogFold;
use crate::redis::Connector;
use crate::shutdown::Shutdown;

const QUEUE: usize = 8192;
const BATCH: usize = 256;
/// Events per pipeline: a batch goes out in pipelines this long, one after the other. Redis
/// runs a client's pipelined commands in one go, so on the connection the calls share, a
/// batch of 256 `XADD`s held every call's command behind it for a few hundred microseconds
/// each tick (the p99).
const CHUNK: usize = 32;
const POLL: Duration = Duration::from_millis(200);
/// How long the writer gathers events before it writes them (or until it has a batch).
const TICK: Duration = Duration::from_millis(5);

/// What the writer task receives, in publishing order.
enum Item {
    Event(Event),
    /// Answered once every event queued before it was written or dropped.
    Flush(oneshot::Sender<()>),
}

/// Events in a Redis Stream shared by all replicas.
pub struct RedisEvents {
    connector: Connector,
    key: String,
    timeout: Duration,
    queue: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
    /// The writer's and the watchers' tasks end on it.
    tasks: Shutdown,
}

impl RedisEvents {
    /// Starts the writer for stream `key`, capped at about `maxlen` entries, written through
    /// `connector`; every Redis call is bounded by `timeout`. On `tasks`' shutdown the writer
    /// writes what it holds, then ends; events published after that are dropped (counted).
    pub fn start(
        connector: Connector,
        key: String,
        maxlen: u64,
        timeout: Duration,
        tasks: &Shutdown,
    ) -> RedisEvents {
        let (queue, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            connector: connector.clone(),
            key: key.clone(),
            maxlen: maxlen as usize,
            timeout,
            dropped: dropped.clone(),
            drops: LogFold::new(),
        };
        tasks.spawn(writer.run(rx, tasks.requested()));
        RedisEvents {
            connector,
            key,
            timeout,
            queue,
            dropped,
            tasks: tasks.clone(),
        }
    }

    /// Events dropped so far (queue full or Redis unavailable).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Appends the `XADD` of `e` to `pipe`, arguments written straight into it (no list of owned
/// fields per event). Empty fields are left out (a reader takes a missing field as empty):
/// fewer arguments per `XADD` is less for Redis to parse and store on every call. The cap is
/// not checked here but once per batch ([`add_trim`]).
fn add_xadd(pipe: &mut redis::Pipeline, key: &str, e: &Event) {
    // Sized up front: grown an argument at a time, each command reallocated several times.
    let text =
        key.len() + e.secret_id.len() + e.subject.len() + e.source_context.len() + e.file_id.len();
    let mut xadd = redis::Cmd::with_capacity(19, text + e.reason.len() + 96);
    xadd.arg("XADD")
        .arg(key)
        .arg("*")
        .arg("kind")
        .arg(e.kind.as_str())
        .arg("secret_id")
        .arg(&e.secret_id)
        .arg("random")
        .arg(e.random);
    for (name, value) in [
        ("subject", &e.subject),
        ("source_context", &e.source_context),
        ("reason", &e.reason),
        ("file_id", &e.file_id),
    ] {
        if !value.is_empty() {
            xadd.arg(name).arg(value);
        }
    }
    xadd.arg("time").arg(e.time);
    // Not `.ignore()`d: redis-rs keeps ignored indices in a hash set, a hash insert per event
    // and a rebuilt reply list per batch. The batch is read as `()`, which takes any reply,
    // and a server error still fails it.
    pipe.add_command(xadd);
}

/// Appends the stream's cap, `XTRIM MAXLEN ~ maxlen`: once per batch rather than on every
/// `XADD` (`XADD MAXLEN ~` cost Redis ~0.5 µs more per entry than a plain `XADD`); the stream
/// exceeds the cap by at most one batch until the trim that follows it.
fn add_trim(pipe: &mut redis::Pipeline, key: &str, maxlen: usize) {
    pipe.cmd("XTRIM")
        .arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen);
}

/// The event an entry holds; `None` for an entry this version does not know.
fn event_of(entry: &StreamId) -> Option<Event> {
    let text = |name: &str| entry.get::<String>(name).unwrap_or_default();
    Some(Event {
        kind: text("kind").parse().ok()?,
        secret_id: text("secret_id"),
        random: entry.get("random").unwrap_or(0),
        subject: text("subject"),
        source_context: text("source_context"),
        reason: text("reason"),
        file_id: text("file_id"),
        time: entry.get("time").unwrap_or(0),
    })
}

/// The writer task's state: where and how batches are written.
struct Writer {
    connector: Connector,
    key: String,
    // Approximate (`MAXLEN ~`): Redis trims whole nodes, far cheaper than an exact cap.
    maxlen: usize,
    timeout: Duration,
    dropped: Arc<AtomicU64>,
    // A full Redis refuses every batch (XADD grows memory): one warning a second, not one
    // per batch.
    drops: LogFold,
}

impl Writer {
    /// Writes batches until every sender is gone, or until `stop`: then what is queued is
    /// written (nothing already accepted is lost to the shutdown) and the task ends.
    async fn run(self, mut rx: mpsc::Receiver<Item>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut items = Vec::with_capacity(BATCH);
        loop {
            let received = tokio::select! {
                received = rx.recv_many(&mut items, BATCH) => received,
                () = &mut stop => break,
            };
            if received == 0 {
                return;
            }
            // Gather for one tick: one pipeline then carries the events of many calls. Sent
            // as they came, each call's event was a Redis round trip of its own, which
            // doubled Redis' CPU per call. The writer sleeps through the tick rather than
            // waking for each event, then takes what arrived. A flush waits at most that tick.
            if items.len() < BATCH && !items.iter().any(|i| matches!(i, Item::Flush(_))) {
                tokio::time::sleep(TICK).await;
                while items.len() < BATCH {
                    match rx.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
            }
            self.write(&mut items).await;
        }
        // Shutdown: no more events are taken; those already queued are written.
        rx.close();
        while rx.recv_many(&mut items, BATCH).await > 0 {
            self.write(&mut items).await;
        }
    }

    /// Writes `items`' events in pipelines of [`CHUNK`] (the trim in the last) and answers
    /// their flushes; empties `items`.
    async fn write(&self, items: &mut Vec<Item>) {
        let mut pipes = Vec::new();
        let mut events: u64 = 0;
        let mut flushes = Vec::new();
        for item in items.drain(..) {
            match item {
                Item::Event(e) => {
                    if events.is_multiple_of(CHUNK as u64) {
                        pipes.push(redis::Pipeline::with_capacity(CHUNK + 1));
                    }
                    add_xadd(pipes.last_mut().expect("pushed"), &self.key, &e);
                    events += 1;
                }
                Item::Flush(done) => flushes.push(done),
            }
        }
        if let Some(last) = pipes.last_mut() {
            add_trim(last, &self.key, self.maxlen);
            // Events of the pipelines not written (or whose outcome is unknown): a failed
            // pipeline ends the batch, the later ones would fail alike.
            let mut unwritten = events;
            if let Some(mut conn) = self.connector.get() {
                for (i, pipe) in pipes.iter().enumerate() {
                    let sent =
                        tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn));
                    if !matches!(sent.await, Ok(Ok(()))) {
                        break;
                    }
                    unwritten -= (events - i as u64 * CHUNK as u64).min(CHUNK as u64);
                }
            }
            if unwritten > 0 {
                let events = unwritten;
                let total = self.dropped.fetch_add(events, Ordering::Relaxed) + events;
                if let Some(folded_batches) = self.drops.occurred(std::time::Instant::now()) {
                    warn!(
                        events,
                        dropped_total = total,
                        folded_batches,
                        "could not write audit events to Redis; dropped"
                    );
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// A stream id (`1795560000000-0`, `1795560000000`) or `0`.
fn is_stream_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let valid =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    valid(parts.next()) && parts.next().is_none_or(|p| valid(Some(p))) && parts.next().is_none()
}

impl RedisEvents {
    /// The newest id in the stream now (`0-0` when empty): where "from now" starts.
    async fn newest_id(&self) -> Result<String, WatchError> {
        let mut conn = self
            .connector
            .ready(self.timeout)
            .await
            .ok_or_else(|| WatchError::Unavailable("not connected to Redis yet".into()))?;
        let reply: StreamRangeReply =
            tokio::time::timeout(self.timeout, conn.xrevrange_count(&self.key, "+", "-", 1))
                .await
                .map_err(|_| WatchError::Unavailable("no answer in time".into()))?
                .map_err(|e| WatchError::Unavailable(e.to_string()))?;
        Ok(reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
    }
}

impl EventLog for RedisEvents {
    fn publish(&self, event: Event) {
        if self.queue.try_send(Item::Event(event)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn watch<'a>(&'a self, start_id: &'a str) -> EventFuture<'a, Result<EventStream, WatchError>> {
        Box::pin(async move {
            let mut last = match start_id {
                "" => self.newest_id().await?,
                id if is_stream_id(id) => id.to_owned(),
                id => {
                    return Err(WatchError::BadStart(format!(
                        "start_id {id:?} is not a stream id (like 1795560000000-0), \"0\" or empty"
                    )));
                }
            };
            let (tx, rx) = mpsc::channel(256);
            let (connector, key, timeout) =
                (self.connector.clone(), self.key.clone(), self.timeout);
            let stop = self.tasks.requested();
            let poll = async move {
                let options = StreamReadOptions::default().count(BATCH);
                loop {
                    if tx.is_closed() {
                        return;
                    }
                    let entries = match connector.get() {
                        Some(mut conn) => tokio::time::timeout(
                            timeout,
                            conn.xread_options(&[&key], &[&last], &options),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                        .map(|reply: StreamReadReply| {
                            reply.keys.into_iter().flat_map(|k| k.ids).collect()
                        })
                        .unwrap_or_default(),
                        None => Vec::new(),
                    };
                    let full = entries.len() == BATCH;
                    for entry in entries {
                        last = entry.id.clone();
                        let Some(event) = event_of(&entry) else {
                            continue;
                        };
                        if tx.send((entry.id, event)).await.is_err() {
                            return;
                        }
                    }
                    if !full {
                        tokio::time::sleep(POLL).await;
                    }
                }
            };
            // A watcher's stream ends with the shutdown (its call then ends too).
            self.tasks.spawn(async move {
                tokio::select! {
                    () = poll => {}
                    () = stop => {}
                }
            });
            Ok(Box::pin(ReceiverStream::new(rx)) as EventStream)
        })
    }

    fn flush(&self) -> EventFuture<'_, ()> {
        Box::pin(async move {
            let (done, written) = oneshot::channel();
            if self.queue.send(Item::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        for ok in ["0", "0-0", "1795560000000-0", "1795560000000"] {
            assert!(is_stream_id(ok), "{ok}");
        }
        for bad in ["", "-", "1-", "-1", "1-2-3", "a-1", "now"] {
            assert!(!is_stream_id(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let entry = StreamId {
            id: "1-0".into(),
            map: [(
                "kind".to_owned(),
                redis::Value::BulkString(b"nope".to_vec()),
            )]
            .into_iter()
            .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        };
        assert!(event_of(&entry).is_none());
    }
}
