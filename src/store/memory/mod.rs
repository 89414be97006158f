//! The embedded in-memory store: the same semantics as Redis, for one process only.
//!
//! Records expire like Redis keys do: each insert evicts the records of its shard that have
//! expired, and a purge every [`PURGE_EVERY`] evicts the rest (as Redis' active expiry does),
//! so an idle process does not keep expired records either. Memory stays proportional to the
//! signatures still within their validity window.

mod records;
mod subjects;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

// tokio's clock, so a test can pause and advance time instead of sleeping (records expire by it).
use tokio::time::Instant;

use self::subjects::SubjectIndex;
use super::outbox::MemoryOutbox;
use super::{
    Admission, AdmitOutcome, Awaiting, CompleteOutcome, ConsumeOutcome, ListCursor, Listed,
    Observed, QuotaOutcome, Quotas, Record, RecordKey, RecordRef, RecordState, Records, StoreError,
    StoreHealth, StoreObserver, StoreOp, SubjectEntry, Subjects, Sweep, Upload, idempotency_token,
};
use crate::quota::{Charge, gcra};

const SHARDS: usize = 16;
/// How often expired records are purged when no insert comes to do it.
pub const PURGE_EVERY: Duration = Duration::from_secs(1);

type Key = (String, u32);

#[derive(Default)]
struct Shard {
    records: HashMap<Key, (Record, Instant)>,
    expiries: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl Shard {
    fn evict_expired(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.expiries.pop() else {
                break;
            };
            if self.records.get(&key).is_some_and(|(_, exp)| *exp == at) {
                self.records.remove(&key);
            }
        }
    }

    fn live(&mut self, key: &Key, now: Instant) -> Option<&mut Record> {
        match self.records.get_mut(key) {
            Some((record, exp)) if *exp > now => Some(record),
            _ => None,
        }
    }
}

/// Records in this process's memory; a second replica would not see them.
pub struct MemoryStore {
    shards: Arc<Vec<Mutex<Shard>>>,
    /// Subject digest → its index.
    subjects: Mutex<HashMap<String, SubjectIndex>>,
    /// How many subjects there may be before the next sweep of forgotten indexes.
    subjects_sweep_at: AtomicUsize,
    hasher: RandomState,
    /// Quota key → (GCRA TAT in ms since `started`, when it may be forgotten).
    quotas: Mutex<HashMap<String, (u64, u64)>>,
    /// The origin of the quotas' clock.
    started: Instant,
    /// The awaiting index and the outbox (`outbox/memory.rs`).
    outbox: Mutex<MemoryOutbox>,
    pub(super) observed: Observed,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        let shards: Arc<Vec<Mutex<Shard>>> =
            Arc::new((0..SHARDS).map(|_| Mutex::default()).collect());
        // Purged on a timer while the store lives: the task holds it weakly and ends with it.
        // Outside a runtime (a plain unit test) records are still evicted on insert.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(purge_expired(Arc::downgrade(&shards)));
        }
        MemoryStore {
            shards,
            subjects: Mutex::default(),
            subjects_sweep_at: AtomicUsize::new(1024),
            hasher: RandomState::new(),
            quotas: Mutex::default(),
            // Far enough in the past that no TAT is 0 by accident.
            started: Instant::now() - Duration::from_secs(1),
            outbox: Mutex::default(),
            observed: Observed::default(),
        }
    }

    /// How many records are held (expired ones not yet evicted included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).records.len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_record<T>(&self, key: RecordKey<'_>, f: impl FnOnce(Option<&mut Record>) -> T) -> T {
        let key = (key.secret_id.to_owned(), key.random);
        let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
        let mut shard = lock(shard);
        f(shard.live(&key, Instant::now()))
    }
}

impl MemoryStore {
    fn subjects(&self) -> std::sync::MutexGuard<'_, HashMap<String, SubjectIndex>> {
        self.subjects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The awaiting index and the outbox.
    pub(super) fn outbox(&self) -> std::sync::MutexGuard<'_, MemoryOutbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a live record at least `keep_for` seconds more.
    fn keep(&self, key: RecordKey<'_>, keep_for: u64) {
        let key = (key.secret_id.to_owned(), key.random);
        let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
        let mut shard = lock(shard);
        let now = Instant::now();
        let floor = now + Duration::from_secs(keep_for);
        if let Some((_, expires)) = shard.records.get_mut(&key)
            && *expires > now
            && *expires < floor
        {
            *expires = floor;
            shard.expiries.push(Reverse((floor, key)));
        }
    }
}

/// Evicts the expired records of every shard every [`PURGE_EVERY`], until the store is gone.
async fn purge_expired(shards: Weak<Vec<Mutex<Shard>>>) {
    loop {
        tokio::time::sleep(PURGE_EVERY).await;
        let Some(shards) = shards.upgrade() else {
            return;
        };
        let now = Instant::now();
        for shard in shards.iter() {
            lock(shard).evict_expired(now);
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a record half-written (each update is one
    // assignment), so a poisoned lock is safe to keep using.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl Quotas for MemoryStore {
    async fn charge_quotas(&self, group: &[Charge]) -> Result<QuotaOutcome, StoreError> {
        self.observed
            .run(StoreOp::Quota, || async move {
                // Milliseconds on the store's own (tokio) clock, as Redis uses its own `TIME`.
                let now = self.started.elapsed().as_millis() as u64;
                let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
                if quotas.len() > 1024 {
                    // Keys whose TAT has passed hold no information any more.
                    quotas.retain(|_, (_, forget_at)| *forget_at > now);
                }
                let mut next = Vec::with_capacity(group.len());
                for charge in group {
                    let tat = quotas.get(&charge.key).map_or(0, |(tat, _)| *tat);
                    match gcra(tat, now, charge.interval_ms, charge.tolerance_ms) {
                        Ok(new_tat) => next.push(new_tat),
                        Err(wait_ms) => {
                            return Ok(QuotaOutcome::Refused {
                                name: charge.name,
                                retry_after: Duration::from_millis(wait_ms),
                            });
                        }
                    }
                }
                for (charge, tat) in group.iter().zip(next) {
                    quotas.insert(charge.key.clone(), (tat, tat));
                }
                Ok(QuotaOutcome::Allowed)
            })
            .await
    }
}

impl StoreHealth for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.observed
            .run_unspanned(StoreOp::Ping, async move { Ok(()) })
            .await
    }
    fn record_count(&self) -> Option<usize> {
        Some(self.len())
    }
    fn observe_with(&self, observer: std::sync::Arc<dyn StoreObserver>) {
        self.observed.set(observer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(random: u32) -> RecordRef<'static> {
        RecordRef {
            key: RecordKey {
                secret_id: "AKID",
                random,
            },
            fingerprint: "fp",
            issued_at: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_with_their_ttl() {
        let store = MemoryStore::new();
        assert!(store.insert_issued(sig(1), 0, 60, "").await.unwrap());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(store.status(sig(1)).await.unwrap(), RecordState::Issued);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.status(sig(1)).await.unwrap(), RecordState::NotIssued);
        // Its nonce is free again.
        assert!(store.insert_issued(sig(1), 0, 60, "").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_store_purges_expired_records_on_its_own() {
        let store = MemoryStore::new();
        for r in 0..100 {
            assert!(store.insert_issued(sig(r), 0, 60, "").await.unwrap());
        }
        assert_eq!(store.len(), 100);
        // No insert after they expire: the purge alone evicts them.
        tokio::time::sleep(Duration::from_secs(60) + PURGE_EVERY * 2).await;
        assert_eq!(store.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_purge_ends_with_the_store() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        let store = MemoryStore::new();
        assert_eq!(tasks(), before + 1, "the purge runs");
        drop(store);
        tokio::time::sleep(PURGE_EVERY * 2).await;
        assert_eq!(tasks(), before, "the purge outlived its store");
    }

    #[tokio::test]
    async fn expired_records_are_evicted() {
        let store = MemoryStore::new();
        for r in 0..100 {
            assert!(store.insert_issued(sig(r), 0, 0, "").await.unwrap());
        }
        // A zero TTL expires at once: the next insert in each shard sweeps them.
        for r in 100..400 {
            store.insert_issued(sig(r), 0, 3600, "").await.unwrap();
        }
        assert_eq!(store.len(), 300);
        assert_eq!(store.status(sig(1)).await.unwrap(), RecordState::NotIssued);
    }
}
