//! Audit and upload events: every issue, consume, revoke and refused consume, and how each
//! upload ended (completed, abandoned, or a refused completion).
//!
//! One interface, [`EventLog`], and its three sinks: [`NoEvents`] (`--events-maxlen 0`),
//! [`LogEvents`] (the in-memory store's: a log line each, and live watchers) and
//! [`RedisEvents`] (the stream `{prefix}events`, shared by all replicas). Publishing never
//! blocks a call and never fails it: an event that cannot be written is dropped and counted.

mod log;
mod stream;

use std::future::Future;
use std::pin::Pin;

use tokio_stream::Stream;

pub use self::log::LogEvents;
pub use self::stream::RedisEvents;

/// Default of `--events-maxlen`: the approximate cap of the Redis stream.
pub const DEFAULT_MAXLEN: u64 = 100_000;

/// What happened; its name (`issued`, `consume_refused`, ...) is what the stream and the log
/// carry.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum EventKind {
    /// IssueSignature succeeded.
    Issued,
    /// ConsumeSignature succeeded: the upload starts.
    Consumed,
    /// RevokeSignature revoked an issued signature.
    Revoked,
    /// ConsumeSignature refused.
    ConsumeRefused,
    /// CompleteUpload: the upload was stored.
    Completed,
    /// Still consumed `--completion-window` after the consume.
    Abandoned,
    /// CompleteUpload refused (FILE_TOO_LARGE: the gateway stored a file over maxFileSize).
    CompleteRefused,
}

impl EventKind {
    /// The kind's name in the stream and the log.
    pub fn as_str(self) -> &'static str {
        self.into()
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
    /// The refusal reason token, for refused consumes and completions.
    pub reason: String,
    /// The platform's file id, for completions.
    pub file_id: String,
    /// Unix seconds.
    pub time: i64,
}

/// Events with their ids, as a watcher receives them.
pub type EventStream = Pin<Box<dyn Stream<Item = (String, Event)> + Send>>;

/// A future of an [`EventLog`] (boxed: the log is used as a trait object).
pub type EventFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why events cannot be followed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The starting point is not one this log can start from.
    #[error("{0}")]
    BadStart(String),
    /// Events are turned off.
    #[error("events are turned off (--events-maxlen 0)")]
    Off,
    /// The store holding them did not answer.
    #[error("the event stream is unavailable: {0}")]
    Unavailable(String),
}

/// Where events go and how they are followed.
pub trait EventLog: Send + Sync + 'static {
    /// Records an event; never blocks, never fails the call that caused it.
    fn publish(&self, event: Event);

    /// Follows events: from now (`start_id` empty), or after `start_id`. The starting point
    /// is fixed when this returns, so an event published after it is always seen.
    fn watch<'a>(&'a self, start_id: &'a str) -> EventFuture<'a, Result<EventStream, WatchError>>;

    /// Resolves once every event published before the call is written (or dropped), so tests
    /// and shutdown wait for events instead of sleeping.
    fn flush(&self) -> EventFuture<'_, ()>;
}

/// Events turned off (`--events-maxlen 0`).
pub struct NoEvents;

impl EventLog for NoEvents {
    fn publish(&self, _event: Event) {}

    fn watch<'a>(&'a self, _start_id: &'a str) -> EventFuture<'a, Result<EventStream, WatchError>> {
        Box::pin(std::future::ready(Err(WatchError::Off)))
    }

    fn flush(&self) -> EventFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator as _;

    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in EventKind::iter() {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert_eq!(EventKind::ConsumeRefused.as_str(), "consume_refused");
        assert!("nope".parse::<EventKind>().is_err());
    }
}
