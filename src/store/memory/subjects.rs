//! A subject's index in memory: the same two structures as in Redis, and its name.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Admission, AdmitOutcome, Key, ListCursor, Listed, MemoryStore, QuotaOutcome, Quotas, RecordKey,
    RecordState, Records, StoreError, StoreOp, SubjectEntry, Subjects,
};

/// One subject's index: the same two structures as in Redis.
pub(super) struct SubjectIndex {
    /// Outstanding (ISSUED) signatures: record name → `expireTime`.
    outstanding: HashMap<Key, i64>,
    /// Every unexpired signature, by (issue time, listing member): newest last.
    listing: BTreeSet<(i64, String)>,
    /// When the whole index may be forgotten (its newest record's expiry, or later while a
    /// consumed upload may still complete).
    forget_at: Instant,
    /// The subject itself, for the notifications of its uploads.
    name: String,
}

fn expire_of(member: &str) -> i64 {
    SubjectEntry::from_member(member, 0).map_or(i64::MIN, |e| e.expire_time)
}

impl MemoryStore {
    /// A consumed or revoked signature no longer counts against its subject's cap, and the
    /// subject's name stays at least `keep_for` seconds (a consumed upload may complete).
    pub(super) fn release(&self, subject: &str, key: RecordKey<'_>, keep_for: u64) {
        if subject.is_empty() {
            return;
        }
        if let Some(index) = self.subjects().get_mut(subject) {
            index
                .outstanding
                .remove(&(key.secret_id.to_owned(), key.random));
            index.forget_at = index
                .forget_at
                .max(Instant::now() + Duration::from_secs(keep_for));
        }
    }
}

impl Subjects for MemoryStore {
    async fn admit(&self, a: Admission<'_>) -> Result<AdmitOutcome, StoreError> {
        // The record, then the quotas, as Redis does in the same transaction (one process:
        // nothing can come between that matters).
        if !self
            .insert_issued(a.record(), a.entry.issued_at, a.ttl_seconds, a.subject)
            .await?
        {
            return Ok(AdmitOutcome::Taken);
        }
        if !a.quotas.is_empty()
            && let QuotaOutcome::Refused { name, retry_after } =
                self.charge_quotas(a.quotas).await?
        {
            return Ok(AdmitOutcome::RateLimited { name, retry_after });
        }
        self.observed
            .run(StoreOp::Admit, || async move {
                let instant = Instant::now();
                let mut subjects = self.subjects();
                // Forget the indexes whose records have all expired, when the map has doubled since
                // the last sweep: amortised O(1) per issue however many subjects there are.
                let sweep_at = self.subjects_sweep_at.load(Ordering::Relaxed);
                if subjects.len() > sweep_at {
                    subjects.retain(|_, index| index.forget_at > instant);
                    self.subjects_sweep_at
                        .store((subjects.len() * 2).max(1024), Ordering::Relaxed);
                }
                let index = subjects
                    .entry(a.subject.to_owned())
                    .or_insert_with(|| SubjectIndex {
                        outstanding: HashMap::new(),
                        listing: BTreeSet::new(),
                        forget_at: instant,
                        name: a.name.to_owned(),
                    });
                index
                    .outstanding
                    .retain(|_, expire| *expire >= a.expired_before);
                if a.cap > 0 && index.outstanding.len() >= a.cap as usize {
                    return Ok(AdmitOutcome::Capped);
                }
                index.outstanding.insert(
                    (a.entry.secret_id.clone(), a.entry.random),
                    a.entry.expire_time,
                );
                // Lazy cleanup, as in Redis: the oldest few entries when expired (listing drops the
                // others it meets), and anything issued before the longest validity.
                let stale: Vec<(i64, String)> = index
                    .listing
                    .iter()
                    .enumerate()
                    .take_while(|(i, (issued_at, _))| *i < 4 || *issued_at < a.issued_before)
                    .filter(|(_, (issued_at, member))| {
                        *issued_at < a.issued_before || expire_of(member) < a.expired_before
                    })
                    .map(|(_, e)| e.clone())
                    .collect();
                for e in stale {
                    index.listing.remove(&e);
                }
                index.listing.insert((a.entry.issued_at, a.entry.member()));
                index.forget_at = index
                    .forget_at
                    .max(instant + Duration::from_secs(a.ttl_seconds));
                Ok(AdmitOutcome::Admitted)
            })
            .await
    }
    async fn withdraw(&self, subject: &str, entry: &SubjectEntry) -> Result<(), StoreError> {
        if let Some(index) = self.subjects().get_mut(subject) {
            index
                .outstanding
                .remove(&(entry.secret_id.clone(), entry.random));
            index.listing.remove(&(entry.issued_at, entry.member()));
        }
        Ok(())
    }
    async fn list_subject(
        &self,
        subject: &str,
        after: Option<&ListCursor>,
        count: usize,
        expired_before: i64,
        _secret_ids: &[&str],
    ) -> Result<Vec<Listed>, StoreError> {
        self.observed
            .run(StoreOp::List, || async move {
                let entries: Vec<SubjectEntry> = {
                    let mut subjects = self.subjects();
                    let Some(index) = subjects.get_mut(subject) else {
                        return Ok(Vec::new());
                    };
                    let mut expired = Vec::new();
                    let mut found = Vec::new();
                    let candidates: Box<dyn Iterator<Item = &(i64, String)>> = match after {
                        Some(c) => {
                            Box::new(index.listing.range(..(c.issued_at, c.member.clone())).rev())
                        }
                        None => Box::new(index.listing.iter().rev()),
                    };
                    for (issued_at, member) in candidates {
                        if found.len() >= count {
                            break;
                        }
                        match SubjectEntry::from_member(member, *issued_at) {
                            Some(e) if e.expire_time >= expired_before => found.push(e),
                            _ => expired.push((*issued_at, member.clone())),
                        }
                    }
                    for gone in expired {
                        index.listing.remove(&gone);
                    }
                    found
                };
                Ok(entries
                    .into_iter()
                    .map(|entry| {
                        let state = self.with_record(entry.key(), |r| {
                            r.map_or(RecordState::NotIssued, |r| r.state_in_subject(subject))
                        });
                        let cursor = ListCursor {
                            issued_at: entry.issued_at,
                            member: entry.member(),
                        };
                        Listed {
                            entry,
                            state,
                            cursor,
                        }
                    })
                    .collect())
            })
            .await
    }
    async fn revoke_in_subject(
        &self,
        entry: &SubjectEntry,
        subject: &str,
        now: i64,
    ) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Revoke, || async move {
                let before = self.with_record(entry.key(), |r| match r {
                    Some(r) if r.state_in_subject(subject) != RecordState::NotIssued => {
                        let fingerprint = r.fingerprint.clone();
                        r.revoke(&fingerprint, now)
                    }
                    _ => RecordState::NotIssued,
                });
                if before == RecordState::Issued {
                    self.release(subject, entry.key(), 0);
                }
                Ok(before)
            })
            .await
    }
    async fn subject_name(&self, digest: &str) -> Result<Option<String>, StoreError> {
        self.observed
            .run(StoreOp::Notify, || async move {
                let now = Instant::now();
                Ok(self
                    .subjects()
                    .get(digest)
                    .filter(|index| index.forget_at > now)
                    .map(|index| index.name.clone()))
            })
            .await
    }
}
