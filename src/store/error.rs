//! How a store call fails: always closed (nothing accepted), with a cause for the metrics and a
//! reason for the caller.

use crate::reason::Reason;

/// Why a store call failed: the `cause` label of `vodsigner_store_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum FailureCause {
    /// No connection to Redis (yet, or any more).
    NotConnected,
    /// No answer within the store timeout.
    Timeout,
    /// The connection broke.
    Connection,
    /// Redis is over `maxmemory` and refused a write (`OOM`).
    OutOfMemory,
    /// No room for new records: Redis is within its memory reserve of `maxmemory`.
    Full,
    /// Redis' `maxmemory-policy` may evict records: nothing new is recorded.
    Evicting,
    /// Applied on the master, but not acknowledged by enough replicas in time (`WAIT`).
    Replication,
    /// Redis answered with an error (a script error, a read-only replica, ...).
    Server,
    /// Redis answered something this version cannot read.
    Reply,
}

impl FailureCause {
    /// Its `cause` label value on `vodsigner_store_errors`.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// The store did not answer, answered something it should not, or has no room: fail closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store unavailable: {message}")]
pub struct StoreError {
    /// What kind of failure it was.
    pub cause: FailureCause,
    /// What happened, for the log and the refusal's message.
    pub message: String,
}

impl StoreError {
    /// A failure of kind `cause`.
    pub fn new(cause: FailureCause, message: impl Into<String>) -> StoreError {
        StoreError {
            cause,
            message: message.into(),
        }
    }

    /// A reply this version cannot read.
    pub fn reply(reply: impl std::fmt::Debug) -> StoreError {
        StoreError::new(FailureCause::Reply, format!("unexpected reply {reply:?}"))
    }

    /// The SPEC section 3 reason: `STORE_FULL` when Redis has no room for new records,
    /// else `STORE_UNAVAILABLE`.
    pub fn reason(&self) -> Reason {
        match self.cause {
            FailureCause::OutOfMemory | FailureCause::Full => Reason::StoreFull,
            _ => Reason::StoreUnavailable,
        }
    }
}
