//! A subject's signatures in the store: the index entries, listing cursors, what an issue adds
//! to the index (with the outstanding cap), and the interface the stores implement.

use std::future::Future;

use super::{RecordKey, RecordRef, RecordState, StoreError};
use crate::quota::Charge;

/// One signature's entry in its subject's index (ListSignatures, RevokeSubject and the
/// outstanding cap). Redis keeps it as the member `~{key tag}:{random}:{expireTime}:{sourceContext}`
/// of the subject's listing index, scored by issue time (`redis/subjects.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectEntry {
    /// The signature's `secretId`.
    pub secret_id: String,
    /// The signature's `random`.
    pub random: u32,
    /// Issue time, Unix seconds.
    pub issued_at: i64,
    /// The signature's `expireTime`, Unix seconds.
    pub expire_time: i64,
    /// The signature's `sourceContext` (empty: none).
    pub source_context: String,
}

impl SubjectEntry {
    /// The member of the listing index (also the tie-breaker of the listing order).
    pub fn member(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.secret_id, self.random, self.expire_time, self.source_context
        )
    }

    /// Parses a listing index member.
    pub fn from_member(member: &str, issued_at: i64) -> Option<SubjectEntry> {
        let mut parts = member.splitn(4, ':');
        Some(SubjectEntry {
            secret_id: parts.next()?.to_owned(),
            random: parts.next()?.parse().ok()?,
            expire_time: parts.next()?.parse().ok()?,
            source_context: parts.next()?.to_owned(),
            issued_at,
        })
    }

    /// Its record's name.
    pub fn key(&self) -> RecordKey<'_> {
        RecordKey {
            secret_id: &self.secret_id,
            random: self.random,
        }
    }
}

/// A position in a subject's listing order (newest first): entries after it come next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListCursor {
    /// The issue time of the last entry seen.
    pub issued_at: i64,
    /// Its listing index member.
    pub member: String,
}

/// An index entry with what its record says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// What the subject index holds about the signature.
    pub entry: SubjectEntry,
    /// The record's state (`NotIssued`: the record is gone or belongs to another signature,
    /// or its key is no longer loaded).
    pub state: RecordState,
    /// Where the listing goes on after this entry (the store's own form of it).
    pub cursor: ListCursor,
}

/// How an issue for a subject is recorded and put in the subject's index.
#[derive(Clone, Copy, Debug)]
pub struct Admission<'a> {
    /// The digest of the subject ([`subject_digest`]).
    pub subject: &'a str,
    /// The subject itself, kept for the notifications of its uploads.
    pub name: &'a str,
    /// The new signature's entry.
    pub entry: &'a SubjectEntry,
    /// The new signature's fingerprint: with the entry, its record to write.
    pub fingerprint: &'a str,
    /// Most ISSUED, unexpired signatures the subject may have (0: no cap).
    pub cap: u32,
    /// Entries whose `expireTime` is below this are expired (now minus the leeway).
    pub expired_before: i64,
    /// The new record's TTL, seconds: how long the index must live at least.
    pub ttl_seconds: u64,
    /// How much longer the subject's name must live, seconds: a consumed upload may still
    /// complete (and be notified, naming the subject) that long after its consume.
    pub keep_seconds: u64,
    /// Entries issued before this are expired whatever they say (now minus the longest
    /// validity and the leeway): a bound on what the lazy cleanup may leave behind.
    pub issued_before: i64,
    /// The per-subject quotas, charged in the same atomic step (their keys share the subject's
    /// hash tag), before the cap is checked.
    pub quotas: &'a [Charge],
    /// Whether this admission also tidies the listing index (drops its oldest expired
    /// entries): one issue in [`TIDY_EVERY`], so the upkeep is not on every issue.
    pub tidy: bool,
}

/// One admission in this many tidies its subject's listing index (picked by the signature's
/// `random`, which is uniform): expired entries leave at up to 16 per tidy, more than one per
/// issue on average, so the index stays bounded by what is unexpired.
pub const TIDY_EVERY: u32 = 16;

impl Admission<'_> {
    /// The record the admission writes.
    pub fn record(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.entry.key(),
            fingerprint: self.fingerprint,
            issued_at: self.entry.issued_at,
        }
    }
}

/// What an admission to a subject's index decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// Recorded and indexed; the quotas were charged.
    Admitted,
    /// Another record holds the signature's nonce: nothing written, charged nor added (the
    /// issuer picks another nonce).
    Taken,
    /// The subject already has `cap` outstanding; nothing added (the quotas were charged). The
    /// record was written: the issuer discards it.
    Capped,
    /// A per-subject quota is exhausted; nothing stays charged nor added (Redis takes back
    /// what its transaction charged and added). The record was written: the issuer discards it.
    RateLimited {
        /// Which quota.
        name: &'static str,
        /// When the next issue would be allowed.
        retry_after: std::time::Duration,
    },
}

/// The digest that names a subject in the store: any subject makes a short, safe key.
pub fn subject_digest(subject: &str) -> String {
    crate::digest::sha256_hex(subject.as_bytes(), 12)
}

/// A subject's signatures: an index beside the records that finds them (ListSignatures,
/// RevokeSubject), counts what is outstanding (the cap, atomic on the index), and keeps the
/// subject's name for its uploads' notifications. The records stay the only authority on
/// whether a signature is accepted.
pub trait Subjects: Send + Sync + 'static {
    /// Records a freshly issued signature of a subject (`Taken` when its nonce is, as
    /// [`super::Records::insert_issued`]) and adds it to the subject's index, in one atomic
    /// step with the per-subject quotas and the outstanding cap: charges the quotas (refused:
    /// nothing charged, nothing added), then refuses (`Capped`, nothing added) if the subject
    /// already has `cap` outstanding once the expired entries are set aside. Where one step
    /// can hold the record and the index (one Redis server, or a Sentinel group's master), it
    /// does; on Redis Cluster they live in different slots, and the record is written first.
    fn admit(
        &self,
        admission: Admission<'_>,
    ) -> impl Future<Output = Result<AdmitOutcome, StoreError>> + Send;

    /// Takes back an admitted entry whose signature was never handed out (a quota refused the
    /// issue after its admission); its record is discarded separately.
    fn withdraw(
        &self,
        subject: &str,
        entry: &SubjectEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `count` unexpired entries of the subject's index after `after` (newest first),
    /// each with its record's state. Fewer than `count`: the end of the index. `secret_ids`
    /// are the loaded keys' ids: a store may name a key in its index by a short tag and
    /// find the id again among them.
    fn list_subject(
        &self,
        subject: &str,
        after: Option<&ListCursor>,
        count: usize,
        expired_before: i64,
        secret_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<Listed>, StoreError>> + Send;

    /// The same atomic step as [`super::Records::revoke`], for a record found by its subject (with
    /// digest `subject`) instead of its signature; returns the state before.
    fn revoke_in_subject(
        &self,
        entry: &SubjectEntry,
        subject: &str,
        now: i64,
    ) -> impl Future<Output = Result<RecordState, StoreError>> + Send;

    /// The subject whose digest is `digest`, while any of its signatures may still
    /// complete; `None` once forgotten.
    fn subject_name(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
}
