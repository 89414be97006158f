//! The upload lifecycle's queues: which consumed uploads still await their completion (the
//! awaiting index, which the abandonment sweep reads), and the notifications to deliver (the
//! outbox).
//!
//! Both are split in [`SHARDS`] shards by the signature's nonce. A shard's awaiting index and
//! outbox share one hash tag, so on Redis Cluster they live in one slot and a notification is
//! queued in the same atomic step that drops its upload from the index ([`Outbox::queue`]).
//! The record itself lives in another slot: the record step comes first, and an upload whose
//! notification was not queued after it (a crash in between) is still in the index, where the
//! sweep finds it and queues it from the record.
//!
//! Delivery is at least once, by one deliverer at a time: a notification handed out
//! ([`Outbox::read_new`], [`Outbox::claim_stale`]) is pending for the one who took it until it
//! is confirmed ([`Outbox::confirm`]), moved to the dead letters ([`Outbox::dead_letter`]), or
//! left untouched long enough for another to claim it.

mod memory;
mod redis;

pub use self::memory::MemoryOutbox;

use std::future::Future;
use std::time::Duration;

use super::{DueUpload, RecordKey, StoreError};

/// Shards of the awaiting index and the outbox: enough to spread the writes of a busy
/// deployment over a Cluster's masters, few enough to read them all on each poll.
pub const SHARDS: u32 = 16;

/// The shard of a signature's upload.
pub fn shard_of(random: u32) -> u32 {
    random % SHARDS
}

/// What the awaiting index keeps of an upload besides its record's name: what the
/// notification of its abandonment says (the signature itself is gone by then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadContext<'a> {
    /// The signature's `sourceContext`.
    pub source_context: &'a str,
    /// Its `storageRegion`.
    pub storage_region: &'a str,
    /// Its `classId` (0: none).
    pub class_id: u64,
}

/// What a member's fields escape: a `:` would end the field.
const MEMBER_FIELD: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b':').add(b'%');

/// The awaiting index's member of an upload:
/// `{secretId}:{random}:{classId}:{storageRegion}:{sourceContext}`, the region escaped (the
/// context, last, may hold anything).
pub fn awaiting_member(key: &RecordKey<'_>, context: &UploadContext<'_>) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        key.secret_id,
        key.random,
        context.class_id,
        percent_encoding::utf8_percent_encode(context.storage_region, MEMBER_FIELD),
        context.source_context
    )
}

/// An awaiting member read back, due at `due`; `None` for one this version does not know.
pub fn parse_awaiting_member(member: &str, due: i64) -> Option<DueUpload> {
    let mut parts = member.splitn(5, ':');
    Some(DueUpload {
        secret_id: parts.next()?.to_owned(),
        random: parts.next()?.parse().ok()?,
        class_id: parts.next()?.parse().ok()?,
        storage_region: percent_encoding::percent_decode_str(parts.next()?)
            .decode_utf8()
            .ok()?
            .into_owned(),
        source_context: parts.next()?.to_owned(),
        due,
    })
}

/// A notification to queue.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The record it is about.
    pub record: RecordKey<'a>,
    /// The upload's entry in the awaiting index.
    pub context: UploadContext<'a>,
    /// The push's `webhook-id`: the same for every delivery of this notification.
    pub webhook_id: &'a str,
    /// `NewFileUpload` or `UploadAbandoned`.
    pub event_type: &'a str,
    /// The push body, JSON.
    pub body: &'a str,
}

/// Where a queued notification is: its shard and stream id. Its text form (`{shard}-{id}`)
/// is the handle PullEvents hands out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    /// Which of the [`SHARDS`] outbox shards holds it (by the signature's nonce).
    pub shard: u32,
    /// The id within the shard's outbox (`{ms}-{seq}`).
    pub id: String,
}

impl Handle {
    /// Parses a handle's text form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Handle> {
        let (shard, id) = text.split_once('-')?;
        let shard: u32 = shard.parse().ok()?;
        let (ms, seq) = id.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (shard < SHARDS && digits(ms) && digits(seq)).then(|| Handle {
            shard,
            id: id.to_owned(),
        })
    }

    /// When it was queued, Unix milliseconds (a stream id starts with it).
    pub fn queued_at_ms(&self) -> i64 {
        self.id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0)
    }
}

impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.shard, self.id)
    }
}

/// A queued notification, as a deliverer receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// Where it is.
    pub handle: Handle,
    /// The push's `webhook-id`.
    pub webhook_id: String,
    /// `NewFileUpload` or `UploadAbandoned`.
    pub event_type: String,
    /// The record it is about (`{secretId}:{random}`), for logs.
    pub record: String,
    /// The push body, JSON.
    pub body: String,
}

/// The awaiting index and the outbox.
pub trait Outbox: Send + Sync + 'static {
    /// Drops the upload's entry from the awaiting index and, in the same step, queues `n`
    /// if the entry was still there or `always` (the completion itself: a late one finds its
    /// entry gone). With `deliver` false (notifications off) only the entry goes. Answers
    /// whether it queued.
    fn queue(
        &self,
        n: &Outgoing<'_>,
        always: bool,
        deliver: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Up to `count` uploads per shard whose due time is at most `now`.
    fn due_uploads(
        &self,
        now: i64,
        count: usize,
    ) -> impl Future<Output = Result<Vec<DueUpload>, StoreError>> + Send;

    /// The sweep's decision on an entry it read: look again at `next` (`None`: drop it).
    /// Nothing happens if the entry moved since (a new consume attempt).
    fn settle(
        &self,
        upload: &DueUpload,
        next: Option<i64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes or renews the sweep's lease for `owner` (one sweeper at a time); answers whether
    /// `owner` holds it now.
    fn lease_sweep(
        &self,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// How many uploads the awaiting index holds (consumed, not yet completed or abandoned).
    fn awaiting(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Hands `consumer` up to `count` notifications nobody took yet.
    fn read_new(
        &self,
        consumer: &str,
        count: usize,
    ) -> impl Future<Output = Result<Vec<Queued>, StoreError>> + Send;

    /// Hands `consumer` up to `count` notifications that their taker left untouched for
    /// `idle` (a deliverer that died, a pull never confirmed).
    fn claim_stale(
        &self,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> impl Future<Output = Result<Vec<Queued>, StoreError>> + Send;

    /// Tells the queue `consumer` still holds these (waiting to retry them), so nobody
    /// claims them as stale.
    fn keep(
        &self,
        consumer: &str,
        handles: &[Handle],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Delivered or confirmed: they leave the outbox. Answers how many were still there.
    fn confirm(&self, handles: &[Handle]) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Moves a notification to the dead letters (kept, with `why`). Answers whether it was
    /// still in the outbox.
    fn dead_letter(
        &self,
        queued: &Queued,
        why: &str,
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// When the oldest notification still in the outbox was queued, Unix milliseconds.
    fn oldest_queued(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awaiting_members_round_trip() {
        let key = RecordKey {
            secret_id: "AKIDx",
            random: 42,
        };
        let context = UploadContext {
            source_context: "user:42/up:1",
            storage_region: "ap:odd%",
            class_id: 7,
        };
        let member = awaiting_member(&key, &context);
        let due = parse_awaiting_member(&member, 5).unwrap();
        assert_eq!(
            (due.secret_id.as_str(), due.random, due.due),
            ("AKIDx", 42, 5)
        );
        assert_eq!(due.context(), context);
        assert_eq!(parse_awaiting_member("AKIDx:42:old-form", 5), None);
    }

    #[test]
    fn handles_round_trip() {
        let h = Handle {
            shard: 7,
            id: "1733331111111-3".into(),
        };
        assert_eq!(h.to_string(), "7-1733331111111-3");
        assert_eq!(Handle::parse(&h.to_string()), Some(h.clone()));
        assert_eq!(h.queued_at_ms(), 1_733_331_111_111);
        for bad in ["", "7", "7-1", "16-1-0", "x-1-0", "7-1-x", "7--0", "-1-0"] {
            assert_eq!(Handle::parse(bad), None, "{bad}");
        }
    }
}
