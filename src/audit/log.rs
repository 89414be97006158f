//! The in-memory store's events: a log line each (target `vod_signer::audit`, message
//! `audit event`), and live watchers; no history.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tracing::info;

use super::{Event, EventFuture, EventLog, EventStream, WatchError};

/// Events as log lines, followed live by watchers.
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
            file_id = %event.file_id,
            time = event.time,
            "audit event"
        );
        // No watcher is fine: the log line is the record.
        let _ = self.live.send((id, event));
    }

    fn watch<'a>(&'a self, start_id: &'a str) -> EventFuture<'a, Result<EventStream, WatchError>> {
        let watched = if start_id.is_empty() {
            // Subscribed here, before this returns: the starting point is now.
            // A watcher too slow for 1024 events in a row misses some; the log has them all.
            let stream = BroadcastStream::new(self.live.subscribe()).filter_map(|r| r.ok());
            Ok(Box::pin(stream) as EventStream)
        } else {
            Err(WatchError::BadStart(
                "the in-memory store keeps no event history: start_id must be empty (from now)"
                    .into(),
            ))
        };
        Box::pin(std::future::ready(watched))
    }

    fn flush(&self) -> EventFuture<'_, ()> {
        // Written as published.
        Box::pin(std::future::ready(()))
    }
}
