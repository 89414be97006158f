//! A subject's index in Redis: two sorted sets and the subject's name under the subject's own
//! hash tag (one Cluster slot), beside the records (other slots).

/// Seconds a subject's index keys get beyond what the admission needs when their expiry is
/// extended: one extension per subject in this long, instead of one per issue.
const EXPIRY_ROOM: u64 = 600;

use super::{
    Admission, AdmitOutcome, ListCursor, Listed, Record, RecordKey, RecordState, RedisStore,
    StoreError, StoreOp, SubjectEntry, Subjects, scripted_status,
};
use crate::redis::Conn;

impl RedisStore {
    /// After a record left `issued` (consume, revoke): its subject's cap no longer counts it.
    /// One plain `ZREM` (never refused over `maxmemory`): the subject's name already lives as
    /// long as a consumed upload may complete (the admission gave it that TTL). The index
    /// lives in another slot than the record, so this is a second step; when it fails, the
    /// entry stays until its expiry (the cap is then stricter, never looser).
    pub(super) async fn release(&self, conn: &mut Conn, subject: &str, key: &RecordKey<'_>) {
        if subject.is_empty() {
            return;
        }
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.subject_keys(subject).0)
            .arg(format!("{}:{}", key.secret_id, key.random));
        if let Err(e) = self
            .bounded(conn, async |c| zrem.query_async::<i64>(c).await)
            .await
        {
            tracing::warn!(error = %e, "could not update the subject index; the entry stays until it expires");
        }
    }
}

impl Subjects for RedisStore {
    async fn admit(&self, a: Admission<'_>) -> Result<AdmitOutcome, StoreError> {
        self.observed
            .run(StoreOp::Admit, || async move {
                let mut conn = self.conn().await?;
                let (outstanding, listing) = self.subject_keys(a.subject);
                let mut call = self.scripts.admit.key(outstanding);
                call.key(listing).key(self.subject_name_key(a.subject));
                for q in a.quotas {
                    call.key(format!("{}{}", self.prefix(), q.key));
                }
                let ttl = a.ttl_seconds.max(1);
                call.arg(a.entry.outstanding_member())
                    .arg(a.entry.expire_time)
                    .arg(a.entry.member())
                    .arg(a.entry.issued_at)
                    .arg(a.expired_before)
                    .arg(a.cap)
                    .arg(ttl)
                    // Room to spare: the keys' expiry is extended once in this long, not on
                    // every issue.
                    .arg(ttl.saturating_add(EXPIRY_ROOM))
                    .arg(u8::from(a.tidy))
                    .arg(a.issued_before)
                    .arg(a.name)
                    .arg(
                        ttl.saturating_add(EXPIRY_ROOM)
                            .saturating_add(a.keep_seconds),
                    );
                for q in a.quotas {
                    call.arg(q.interval_ms).arg(q.tolerance_ms);
                }
                let (index, wait_ms): (i64, u64) = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                Ok(match index {
                    0 => AdmitOutcome::Admitted,
                    -1 => AdmitOutcome::Capped,
                    i => {
                        let q = usize::try_from(i - 1)
                            .ok()
                            .and_then(|i| a.quotas.get(i))
                            .ok_or_else(|| {
                                StoreError::reply(&[index.to_string(), wait_ms.to_string()])
                            })?;
                        AdmitOutcome::RateLimited {
                            name: q.name,
                            retry_after: std::time::Duration::from_millis(wait_ms),
                        }
                    }
                })
            })
            .await
    }
    async fn withdraw(&self, subject: &str, entry: &SubjectEntry) -> Result<(), StoreError> {
        self.observed
            .run(StoreOp::Discard, || async move {
                let mut conn = self.conn().await?;
                let (outstanding, listing) = self.subject_keys(subject);
                let mut pipe = redis::pipe();
                pipe.cmd("ZREM")
                    .arg(outstanding)
                    .arg(entry.outstanding_member())
                    .ignore()
                    .cmd("ZREM")
                    .arg(listing)
                    .arg(entry.member())
                    .ignore();
                self.bounded(&mut conn, async |c| pipe.query_async::<()>(c).await)
                    .await
            })
            .await
    }
    async fn list_subject(
        &self,
        subject: &str,
        after: Option<&ListCursor>,
        count: usize,
        expired_before: i64,
    ) -> Result<Vec<Listed>, StoreError> {
        self.observed
            .run(StoreOp::List, || async move {
                let mut conn = self.conn().await?;
                let mut call = self
                    .scripts
                    .page
                    .pick(&self.memory)
                    .key(self.subject_keys(subject).1);
                call.arg(expired_before).arg(count);
                match after {
                    Some(c) => call.arg(1).arg(c.issued_at).arg(&c.member),
                    None => call.arg(0).arg(0).arg(""),
                };
                let page: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let entries: Vec<SubjectEntry> = page
                    .chunks_exact(2)
                    .filter_map(|pair| {
                        let issued_at = pair[1].parse::<f64>().ok()? as i64;
                        SubjectEntry::from_member(&pair[0], issued_at)
                    })
                    .collect();
                if entries.is_empty() {
                    return Ok(Vec::new());
                }
                // The records live in other slots: MGET, which the Cluster client splits by slot.
                let mut mget = redis::cmd("MGET");
                for e in &entries {
                    mget.arg(self.key_of(&e.key()));
                }
                let records: Vec<Option<String>> = self
                    .bounded(&mut conn, async |c| mget.query_async(c).await)
                    .await?;
                Ok(entries
                    .into_iter()
                    .zip(records)
                    .map(|(entry, text)| {
                        let state = text
                            .as_deref()
                            .and_then(Record::decode)
                            .map_or(RecordState::NotIssued, |r| r.state_in_subject(subject));
                        Listed { entry, state }
                    })
                    .collect())
            })
            .await
    }
    async fn revoke_in_subject(
        &self,
        record: RecordKey<'_>,
        subject: &str,
        now: i64,
    ) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Revoke, || async move {
                if subject.is_empty() {
                    return Ok(RecordState::NotIssued);
                }
                let mut conn = self.conn().await?;
                let key = self.key_of(&record);
                let mut call = self.scripts.revoke.pick(&self.memory).key(&key);
                call.arg("").arg(now).arg(subject).arg("").arg(0);
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let before = scripted_status(&reply)?;
                if before == RecordState::Issued {
                    self.replicated(&conn, &key).await?;
                    self.release(&mut conn, subject, &record).await;
                }
                Ok(before)
            })
            .await
    }
    async fn subject_name(&self, digest: &str) -> Result<Option<String>, StoreError> {
        self.observed
            .run(StoreOp::Notify, || async move {
                let mut conn = self.conn().await?;
                let mut get = redis::cmd("GET");
                get.arg(self.subject_name_key(digest));
                self.bounded(&mut conn, async |c| {
                    get.query_async::<Option<String>>(c).await
                })
                .await
            })
            .await
    }
}
