//! The replay guard's record of every issued signature (SPEC section 4).
//!
//! One interface, [`Store`], and two implementations: [`RedisStore`] (shared by all replicas)
//! and [`MemoryStore`] (one process: development, single-replica deployments). Every
//! operation touches exactly one record, named by the signature's SecretId and nonce, and
//! compares the signature's fingerprint so two signatures that share a nonce are never
//! confused. A missing record always means refusal: lost data can never let a signature
//! through twice.
//!
//! Signatures issued for a `subject` are also indexed per subject ([`Store::admit`],
//! [`Store::list_subject`], [`Store::revoke_in_subject`]): the index finds and counts them
//! (the outstanding cap is atomic on it), while each record stays the only authority on
//! whether its signature is accepted.
//!
//! The store knows nothing of gRPC; it reports outcomes, and the service decides what they
//! mean for the caller.

mod error;
mod memory;
mod observe;
pub mod outbox;
mod record;
mod redis;
mod subjects;

pub use self::error::{FailureCause, StoreError};
pub use self::memory::MemoryStore;
pub use self::observe::{Observed, StoreObserver, StoreOp};
pub use self::outbox::{Handle, Outbox, Outgoing, Queued, UploadContext};
pub use self::record::{Record, encode_field};

pub use self::redis::{RedisStore, RedisStoreError};
pub use self::subjects::{
    Admission, AdmitOutcome, ListCursor, Listed, SubjectEntry, Subjects, TIDY_EVERY, subject_digest,
};

use std::future::Future;

use crate::quota::Charge;

/// Names one record: a signature's SecretId and nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordKey<'a> {
    /// The signature's `secretId` (validated: `A-Z a-z 0-9 _ -` only).
    pub secret_id: &'a str,
    /// The signature's `random`.
    pub random: u32,
}

/// What the store knows of one signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// No record, or a record of another signature with the same nonce.
    NotIssued,
    /// Issued and unused.
    Issued,
    /// Consumed at this Unix time.
    Consumed {
        /// Unix seconds.
        at: i64,
    },
    /// Revoked at this Unix time.
    Revoked {
        /// Unix seconds.
        at: i64,
    },
    /// Consumed, and its upload completed at this Unix time.
    Completed {
        /// Unix seconds of the completion.
        at: i64,
        /// Unix seconds of the consume.
        consumed_at: i64,
    },
    /// Consumed, and marked abandoned at this Unix time (no completion within the window).
    Abandoned {
        /// Unix seconds of the abandonment.
        at: i64,
        /// Unix seconds of the consume.
        consumed_at: i64,
    },
}

/// The file an upload stored (CompleteUpload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upload {
    /// The platform's id of the stored file.
    pub file_id: String,
    /// Bytes stored.
    pub file_size: u64,
    /// Its type, e.g. `mp4`.
    pub media_type: String,
    /// Where it can be fetched or played.
    pub media_url: String,
}

/// The outcome of [`Store::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// Completed by this call, or by an earlier one with the same file id (`repeat`).
    Completed {
        /// Unix seconds of the completion (the first call's on a repeat).
        at: i64,
        /// Completed after it was marked abandoned.
        late: bool,
        /// An earlier call completed it with this file.
        repeat: bool,
        /// Unix seconds of the consume.
        consumed_at: i64,
        /// The digest of the subject it was issued for (empty: none).
        subject: String,
    },
    /// Already completed with another file.
    OtherFile {
        /// Unix seconds of that completion.
        at: i64,
        /// That file's id.
        file_id: String,
    },
    /// Not consumed (issued, revoked) or not on record.
    Refused(RecordState),
}

/// What a consume tells the store about the upload it starts, so the upload can be found
/// again if it never completes.
#[derive(Clone, Copy, Debug)]
pub struct Awaiting<'a> {
    /// What the abandonment's notification says about the upload.
    pub context: UploadContext<'a>,
    /// Unix seconds after which the upload counts as abandoned (consume time plus the
    /// completion window).
    pub due: i64,
    /// The consumed record lives at least this long from now, seconds, so a late completion
    /// still finds it.
    pub keep_for: u64,
}

/// An upload the abandonment sweep found due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueUpload {
    /// Which record.
    pub secret_id: String,
    /// That record's nonce (`Random`).
    pub random: u32,
    /// The signature's `sourceContext`.
    pub source_context: String,
    /// Its `storageRegion`.
    pub storage_region: String,
    /// Its `classId` (0: none).
    pub class_id: u64,
    /// When the sweep was told to look at it, Unix seconds.
    pub due: i64,
}

impl DueUpload {
    /// Its record's name.
    pub fn key(&self) -> RecordKey<'_> {
        RecordKey {
            secret_id: &self.secret_id,
            random: self.random,
        }
    }

    /// What its entry keeps besides the record's name.
    pub fn context(&self) -> UploadContext<'_> {
        UploadContext {
            source_context: &self.source_context,
            storage_region: &self.storage_region,
            class_id: self.class_id,
        }
    }
}

/// What the abandonment sweep's record step found (or did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Still consumed but not yet due: look again at this Unix time.
    NotYet {
        /// Unix seconds.
        due: i64,
    },
    /// Marked abandoned by this step (or an earlier one whose notification was not queued).
    Abandoned {
        /// The record as it is now.
        record: Record,
    },
    /// Completed (its notification may not have been queued: a crash in between).
    Completed {
        /// The record as it is now.
        record: Record,
    },
    /// Nothing awaits: the consume never happened (issued, revoked) or the record is gone.
    Nothing,
}

/// The outcome of [`Store::consume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// This call consumed it, or repeats the call that did (same idempotency key).
    Consumed {
        /// When it was consumed, Unix seconds (the first call's time on a repeat).
        at: i64,
    },
    /// Refused: the record was not in the `issued` state.
    Refused(RecordState),
}

/// The outcome of [`Store::charge_quotas`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaOutcome {
    /// Every quota had room; all were charged.
    Allowed,
    /// This quota is exhausted; nothing was charged.
    Refused {
        /// Which quota.
        name: &'static str,
        /// When the next issue would be allowed.
        retry_after: std::time::Duration,
    },
}

/// What one signature's record operations need to know about it.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// Which record.
    pub key: RecordKey<'a>,
    /// The fingerprint of its tag ([`crate::signature::fingerprint`]).
    pub fingerprint: &'a str,
    /// Its issue time (the signature's `currentTimeStamp`), Unix seconds.
    pub issued_at: i64,
}

/// The replay guard's records, one per signature: each operation one atomic step on one
/// record (SPEC section 4).
pub trait Records: Send + Sync + 'static {
    /// Records a new signature as issued, unless its key exists (then `Ok(false)`: pick another
    /// nonce). The record expires after `ttl_seconds`. `subject` is the digest of the
    /// subject it is for (empty: none), kept in the record.
    fn insert_issued(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        ttl_seconds: u64,
        subject: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the record of a signature that was never handed out (its issue was refused or
    /// failed after the record may have been written), issued for the subject with digest
    /// `subject` (empty: none), if the record is still the one its issue wrote: a record
    /// another signature holds under the same nonce stays.
    fn discard(
        &self,
        sig: RecordRef<'_>,
        subject: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The signature's status; changes nothing.
    fn status(
        &self,
        sig: RecordRef<'_>,
    ) -> impl Future<Output = Result<RecordState, StoreError>> + Send;

    /// Moves `issued` to `consumed` in one atomic step. A repeat with the same non-empty
    /// idempotency key of the call that consumed it gets the same success. The upload it
    /// starts enters the awaiting index ([`Outbox`]) first, so it is found again if it never
    /// completes.
    fn consume(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        idempotency_key: &str,
        awaiting: Awaiting<'_>,
    ) -> impl Future<Output = Result<ConsumeOutcome, StoreError>> + Send;

    /// Records the stored upload: `consumed` (or `abandoned`) becomes `completed` in one
    /// atomic step; the same file again answers the first call's completion.
    fn complete(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        upload: &Upload,
    ) -> impl Future<Output = Result<CompleteOutcome, StoreError>> + Send;

    /// The abandonment sweep's record step for an upload it found due: a record still
    /// consumed `window` seconds after its consume becomes abandoned.
    fn sweep(
        &self,
        key: RecordKey<'_>,
        now: i64,
        window: i64,
    ) -> impl Future<Output = Result<Sweep, StoreError>> + Send;

    /// Moves `issued` to `revoked` in one atomic step; returns the status before.
    fn revoke(
        &self,
        sig: RecordRef<'_>,
        now: i64,
    ) -> impl Future<Output = Result<RecordState, StoreError>> + Send;
}

/// The issuance quotas (GCRA, see `crate::quota`), counted in the store so every replica sees
/// the same count.
pub trait Quotas: Send + Sync + 'static {
    /// Charges every quota of `group` in one atomic step, all or nothing (SPEC section 6
    /// quotas; GCRA, see `crate::quota`).
    fn charge_quotas(
        &self,
        group: &[Charge],
    ) -> impl Future<Output = Result<QuotaOutcome, StoreError>> + Send;
}

/// What the service knows of the store itself: whether it answers, whether it may take new
/// records, and who is told how its operations go.
pub trait StoreHealth: Send + Sync + 'static {
    /// Whether the store answers now.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether a new signature may be recorded now, from what the store already knows (one
    /// atomic load: it runs on every issue, before the quotas are charged): `Full` while Redis
    /// is within its memory reserve, `Unavailable` while it may evict records.
    fn accepts_issues(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Why health must say NOT_SERVING although the store answers (a Redis whose
    /// `maxmemory-policy` may evict records); `None`: no reason.
    fn unsafe_to_serve(&self) -> Option<String> {
        None
    }

    /// What the store knows of Redis' memory (for the metrics); `None` without Redis.
    fn memory(&self) -> Option<crate::redis::MemoryStatus> {
        None
    }

    /// How many signature records the store holds, where that is cheap to know (the
    /// in-memory store; Redis shares its key count with other data, so it says `None`).
    fn record_count(&self) -> Option<usize> {
        None
    }

    /// Reports every operation's latency and failures to `observer` from now on (the first
    /// observer set stays).
    fn observe_with(&self, observer: std::sync::Arc<dyn StoreObserver>);
}

/// Everything the use cases need of a store: its records, its subject index, its quotas, the
/// upload lifecycle's queues, its health. Implemented for every type that has all of them.
pub trait Store: Records + Subjects + Quotas + Outbox + StoreHealth {}

impl<T: Records + Subjects + Quotas + Outbox + StoreHealth> Store for T {}

/// A short digest of an idempotency key, so records hold a fixed-size token of any key.
pub fn idempotency_token(key: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    crate::digest::sha256_hex(key.as_bytes(), 8)
}
