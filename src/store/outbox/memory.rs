//! The awaiting index and the outbox in this process's memory, with the Redis semantics:
//! a notification handed out is pending for its taker until confirmed, dead-lettered, or
//! left untouched long enough for another taker to claim it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Handle, Outbox, Outgoing, Queued, UploadContext, awaiting_member as member,
    parse_awaiting_member, shard_of,
};
use crate::store::{DueUpload, MemoryStore, RecordKey, StoreError, StoreOp};

/// A queued notification and who holds it.
struct Entry {
    queued: Queued,
    /// Who took it last (`None`: nobody yet).
    owner: Option<String>,
    /// When it was last handed out or kept.
    touched: Instant,
}

/// The in-memory awaiting index and outbox.
#[derive(Default)]
pub struct MemoryOutbox {
    /// Awaiting uploads by (due, member), and each member's due time.
    due: BTreeSet<(i64, String)>,
    awaiting: HashMap<String, i64>,
    /// The outbox in queue order, by sequence number.
    queue: BTreeMap<u64, Entry>,
    sequence: u64,
    /// Notifications given up on, with why and when (kept, like Redis's dead letters).
    dead: Vec<(Queued, String, i64)>,
    /// The sweep's lease: who, until when.
    lease: Option<(String, Instant)>,
}

impl MemoryOutbox {
    /// Enters a consumed upload, unless it is there already (a replay must not move it).
    pub fn await_upload(&mut self, key: &RecordKey<'_>, context: &UploadContext<'_>, due: i64) {
        let member = member(key, context);
        if !self.awaiting.contains_key(&member) {
            self.due.insert((due, member.clone()));
            self.awaiting.insert(member, due);
        }
    }

    fn remove_awaiting(&mut self, member: &str) -> bool {
        match self.awaiting.remove(member) {
            Some(due) => {
                self.due.remove(&(due, member.to_owned()));
                true
            }
            None => false,
        }
    }

    /// How many notifications were given up on.
    pub fn dead_letters(&self) -> usize {
        self.dead.len()
    }

    fn sequence_of(handle: &Handle) -> Option<u64> {
        handle.id.split('-').nth(1)?.parse().ok()
    }
}

impl Outbox for MemoryStore {
    async fn queue(
        &self,
        n: &Outgoing<'_>,
        always: bool,
        deliver: bool,
    ) -> Result<bool, StoreError> {
        self.observed
            .run(StoreOp::Notify, || async move {
                let mut outbox = self.outbox();
                let removed = outbox.remove_awaiting(&member(&n.record, &n.context));
                if !(deliver && (removed || always)) {
                    return Ok(false);
                }
                outbox.sequence += 1;
                let sequence = outbox.sequence;
                let now_ms = crate::clock::unix_now_ms();
                let queued = Queued {
                    handle: Handle {
                        shard: shard_of(n.record.random),
                        id: format!("{now_ms}-{sequence}"),
                    },
                    webhook_id: n.webhook_id.to_owned(),
                    event_type: n.event_type.to_owned(),
                    record: format!("{}:{}", n.record.secret_id, n.record.random),
                    body: n.body.to_owned(),
                };
                outbox.queue.insert(
                    sequence,
                    Entry {
                        queued,
                        owner: None,
                        touched: Instant::now(),
                    },
                );
                Ok(true)
            })
            .await
    }

    async fn due_uploads(&self, now: i64, count: usize) -> Result<Vec<DueUpload>, StoreError> {
        let outbox = self.outbox();
        Ok(outbox
            .due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .take(count)
            .filter_map(|(due, member)| parse_awaiting_member(member, *due))
            .collect())
    }

    async fn settle(&self, upload: &DueUpload, next: Option<i64>) -> Result<(), StoreError> {
        let mut outbox = self.outbox();
        let member = member(&upload.key(), &upload.context());
        if outbox.awaiting.get(&member) != Some(&upload.due) {
            return Ok(());
        }
        outbox.remove_awaiting(&member);
        if let Some(next) = next {
            outbox.due.insert((next, member.clone()));
            outbox.awaiting.insert(member, next);
        }
        Ok(())
    }

    async fn lease_sweep(&self, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let mut outbox = self.outbox();
        let now = Instant::now();
        let held = match &outbox.lease {
            Some((holder, until)) => holder == owner || *until <= now,
            None => true,
        };
        if held {
            outbox.lease = Some((owner.to_owned(), now + lease));
        }
        Ok(held)
    }

    async fn awaiting(&self) -> Result<u64, StoreError> {
        Ok(self.outbox().awaiting.len() as u64)
    }

    async fn read_new(&self, consumer: &str, count: usize) -> Result<Vec<Queued>, StoreError> {
        let mut outbox = self.outbox();
        let now = Instant::now();
        Ok(outbox
            .queue
            .values_mut()
            .filter(|e| e.owner.is_none())
            .take(count)
            .map(|e| {
                e.owner = Some(consumer.to_owned());
                e.touched = now;
                e.queued.clone()
            })
            .collect())
    }

    async fn claim_stale(
        &self,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<Queued>, StoreError> {
        let mut outbox = self.outbox();
        let now = Instant::now();
        Ok(outbox
            .queue
            .values_mut()
            .filter(|e| e.owner.is_some() && now.duration_since(e.touched) >= idle)
            .take(count)
            .map(|e| {
                e.owner = Some(consumer.to_owned());
                e.touched = now;
                e.queued.clone()
            })
            .collect())
    }

    async fn keep(&self, consumer: &str, handles: &[Handle]) -> Result<(), StoreError> {
        let mut outbox = self.outbox();
        let now = Instant::now();
        for handle in handles {
            let Some(sequence) = MemoryOutbox::sequence_of(handle) else {
                continue;
            };
            if let Some(entry) = outbox.queue.get_mut(&sequence) {
                entry.owner = Some(consumer.to_owned());
                entry.touched = now;
            }
        }
        Ok(())
    }

    async fn confirm(&self, handles: &[Handle]) -> Result<u32, StoreError> {
        let mut outbox = self.outbox();
        let mut confirmed = 0;
        for handle in handles {
            let Some(sequence) = MemoryOutbox::sequence_of(handle) else {
                continue;
            };
            if outbox
                .queue
                .get(&sequence)
                .is_some_and(|e| e.queued.handle == *handle && e.owner.is_some())
            {
                outbox.queue.remove(&sequence);
                confirmed += 1;
            }
        }
        Ok(confirmed)
    }

    async fn dead_letter(&self, q: &Queued, why: &str, now: i64) -> Result<bool, StoreError> {
        let mut outbox = self.outbox();
        let Some(sequence) = MemoryOutbox::sequence_of(&q.handle) else {
            return Ok(false);
        };
        match outbox.queue.remove(&sequence) {
            Some(entry) => {
                outbox.dead.push((entry.queued, why.to_owned(), now));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn oldest_queued(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .outbox()
            .queue
            .values()
            .next()
            .map(|e| e.queued.handle.queued_at_ms()))
    }
}
