//! Audit and upload events: every issue, consume, revoke and refused consume.
//!
//! With Redis they go to the stream `{prefix}events` (see `store::RedisEvents`), capped by an
//! approximate `MAXLEN`; with the in-memory store they go to the log (target
//! `vod_signer::audit`) and to live watchers only. Publishing never blocks a call and never
//! fails it: an event that cannot be written is dropped and counted.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tracing::info;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// IssueSignature succeeded.
    Issued,
    /// ConsumeSignature succeeded: the upload starts.
    Consumed,
    /// RevokeSignature revoked an issued signature.
    Revoked,
    /// ConsumeSignature refused.
    ConsumeRefused,
}

impl EventKind {
    /// The kind's name in the stream and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Issued => "issued",
            EventKind::Consumed => "consumed",
            EventKind::Revoked => "revoked",
            EventKind::ConsumeRefused => "consume_refused",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Issued,
            EventKind::Consumed,
            EventKind::Revoked,
            EventKind::ConsumeRefused,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The signature's SecretId (empty when a refused consume could not be parsed).
    pub secret_id: String,
    /// The signature's nonce.
    pub random: u32,
    /// The end user, known at issue only.
    pub subject: String,
    /// The signature's `sourceContext`.
    pub source_context: String,
    /// The refusal reason token, for refused consumes.
    pub reason: String,
    /// Unix seconds.
    pub time: i64,
}

/// Events with their ids, as a watcher receives them.
pub type EventStream = Pin<Box<dyn Stream<Item = (String, Event)> + Send>>;

/// Where events go and how they are followed.
pub trait EventLog: Send + Sync + 'static {
    /// Records an event; never blocks, never fails the call that caused it.
    fn publish(&self, event: Event);

    /// Follows events: from now (`start_id` empty), or after `start_id`.
    fn watch(&self, start_id: &str) -> Result<EventStream, String>;
}

/// Events turned off (`--events-maxlen 0`).
pub struct NoEvents;

impl EventLog for NoEvents {
    fn publish(&self, _event: Event) {}

    fn watch(&self, _start_id: &str) -> Result<EventStream, String> {
        Err("events are turned off (--events-maxlen 0)".into())
    }
}

/// The in-memory store's events: one log line each, and live watchers; no history.
pub struct LogEvents {
    live: broadcast::Sender<(String, Event)>,
    sequence: AtomicU64,
}

impl Default for LogEvents {
    fn default() -> Self {
        LogEvents::new()
    }
}

impl LogEvents {
    /// A log with no watcher yet.
    pub fn new() -> LogEvents {
        LogEvents {
            live: broadcast::channel(1024).0,
            sequence: AtomicU64::new(0),
        }
    }
}

impl EventLog for LogEvents {
    fn publish(&self, event: Event) {
        let id = self.sequence.fetch_add(1, Ordering::Relaxed).to_string();
        info!(
            target: "vod_signer::audit",
            id = %id,
            kind = event.kind.as_str(),
            secret_id = %event.secret_id,
            random = event.random,
            subject = %event.subject,
            source_context = %event.source_context,
            reason = %event.reason,
            time = event.time,
            "audit event"
        );
        // No watcher is fine: the log line is the record.
        let _ = self.live.send((id, event));
    }

    fn watch(&self, start_id: &str) -> Result<EventStream, String> {
        if !start_id.is_empty() {
            return Err(
                "the in-memory store keeps no event history: start_id must be empty (from now)"
                    .into(),
            );
        }
        // A watcher too slow for 1024 events in a row misses some; the log has them all.
        let stream = BroadcastStream::new(self.live.subscribe()).filter_map(|r| r.ok());
        Ok(Box::pin(stream))
    }
}
