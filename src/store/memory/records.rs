//! Records in memory: the same transitions as the Redis scripts (`Record`'s own).

use std::hash::BuildHasher as _;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Awaiting, CompleteOutcome, ConsumeOutcome, MemoryStore, Record, RecordKey, RecordRef,
    RecordState, Records, Reverse, SHARDS, StoreError, StoreOp, Sweep, Upload, idempotency_token,
    lock,
};

impl Records for MemoryStore {
    async fn insert_issued(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        ttl_seconds: u64,
        subject: &str,
    ) -> Result<bool, StoreError> {
        self.observed
            .run(StoreOp::Issue, || async move {
                let key = (sig.key.secret_id.to_owned(), sig.key.random);
                let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
                let mut shard = lock(shard);
                let instant = Instant::now();
                shard.evict_expired(instant);
                if shard.live(&key, instant).is_some() {
                    return Ok(false);
                }
                let expires = instant + Duration::from_secs(ttl_seconds);
                shard.expiries.push(Reverse((expires, key.clone())));
                shard.records.insert(
                    key,
                    (Record::issued(sig.fingerprint, now, subject), expires),
                );
                Ok(true)
            })
            .await
    }
    async fn status(&self, sig: RecordRef<'_>) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Status, || async move {
                Ok(self.with_record(sig.key, |r| {
                    r.map_or(RecordState::NotIssued, |r| r.state_for(sig.fingerprint))
                }))
            })
            .await
    }
    async fn consume(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        idempotency_key: &str,
        awaiting: Awaiting<'_>,
    ) -> Result<ConsumeOutcome, StoreError> {
        self.observed
            .run(StoreOp::Consume, || async move {
                let token = idempotency_token(idempotency_key);
                // As in Redis: the upload is entered before the record changes.
                self.outbox()
                    .await_upload(&sig.key, &awaiting.context, awaiting.due);
                let (outcome, subject) = self.with_record(sig.key, |r| match r {
                    Some(r) => (r.consume(sig.fingerprint, now, &token), r.subject.clone()),
                    None => (
                        ConsumeOutcome::Refused(RecordState::NotIssued),
                        String::new(),
                    ),
                });
                if matches!(outcome, ConsumeOutcome::Consumed { .. }) {
                    self.keep(sig.key, awaiting.keep_for);
                    self.release(&subject, sig.key, awaiting.keep_for);
                }
                Ok(outcome)
            })
            .await
    }
    async fn complete(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        upload: &Upload,
    ) -> Result<CompleteOutcome, StoreError> {
        self.observed
            .run(StoreOp::Complete, || async move {
                Ok(self.with_record(sig.key, |r| match r {
                    Some(r) => r.complete(sig.fingerprint, now, upload),
                    None => CompleteOutcome::Refused(RecordState::NotIssued),
                }))
            })
            .await
    }
    async fn sweep(&self, key: RecordKey<'_>, now: i64, window: i64) -> Result<Sweep, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Sweep, async move {
                Ok(self.with_record(key, |r| match r {
                    Some(r) if r.awaits_upload() => {
                        if r.abandon(now, window) {
                            Sweep::Abandoned { record: r.clone() }
                        } else {
                            Sweep::NotYet {
                                due: r.changed_at.saturating_add(window),
                            }
                        }
                    }
                    Some(r) => match r.state_for(&r.fingerprint.clone()) {
                        RecordState::Completed { .. } => Sweep::Completed { record: r.clone() },
                        RecordState::Abandoned { .. } => Sweep::Abandoned { record: r.clone() },
                        _ => Sweep::Nothing,
                    },
                    None => Sweep::Nothing,
                }))
            })
            .await
    }
    async fn revoke(&self, sig: RecordRef<'_>, now: i64) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Revoke, || async move {
                let (before, subject) = self.with_record(sig.key, |r| {
                    r.map_or((RecordState::NotIssued, String::new()), |r| {
                        (r.revoke(sig.fingerprint, now), r.subject.clone())
                    })
                });
                if before == RecordState::Issued {
                    self.release(&subject, sig.key, 0);
                }
                Ok(before)
            })
            .await
    }
    async fn discard(&self, sig: RecordRef<'_>, _subject: &str) -> Result<(), StoreError> {
        self.observed
            .run(StoreOp::Discard, || async move {
                let key = (sig.key.secret_id.to_owned(), sig.key.random);
                let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
                let mut shard = lock(shard);
                // Only this signature's record, still issued (another's stays).
                if shard
                    .records
                    .get(&key)
                    .is_some_and(|(r, _)| r.state_for(sig.fingerprint) == RecordState::Issued)
                {
                    shard.records.remove(&key);
                }
                Ok(())
            })
            .await
    }
}
