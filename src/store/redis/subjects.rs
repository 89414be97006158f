//! A subject's index in Redis: two sorted sets and the subject's name under the subject's own
//! hash tag (one Cluster slot), beside the records (other slots).

use super::{
    Admission, ListCursor, Listed, Record, RecordKey, RecordState, RedisStore, StoreError, StoreOp,
    SubjectEntry, Subjects, scripted_status,
};
use crate::redis::Conn;

impl RedisStore {
    /// After a record left `issued` (consume, revoke): its subject's cap no longer counts it,
    /// and the subject's name is kept at least `keep_for` seconds (a consumed upload may
    /// still complete, and its notification names the subject). The index lives in another
    /// slot than the record, so this is a second step; when it fails, the entry stays until
    /// its expiry (the cap is then stricter, never looser).
    pub(super) async fn release(
        &self,
        conn: &mut Conn,
        subject: &str,
        key: &RecordKey<'_>,
        keep_for: u64,
    ) {
        if subject.is_empty() {
            return;
        }
        let mut call = self
            .scripts
            .release
            .pick(&self.memory)
            .key(self.subject_keys(subject).0);
        call.key(self.subject_name_key(subject))
            .arg(format!("{}:{}", key.secret_id, key.random))
            .arg(keep_for);
        if let Err(e) = self
            .bounded(conn, async |c| call.invoke_async::<i64>(c).await)
            .await
        {
            tracing::warn!(error = %e, "could not update the subject index; the entry stays until it expires");
        }
    }
}

impl Subjects for RedisStore {
    async fn admit(&self, a: Admission<'_>) -> Result<bool, StoreError> {
        self.observed
            .run(StoreOp::Admit, || async move {
                let mut conn = self.conn().await?;
                let (outstanding, listing) = self.subject_keys(a.subject);
                let mut call = self.scripts.admit.key(outstanding);
                call.key(listing)
                    .key(self.subject_name_key(a.subject))
                    .arg(a.entry.outstanding_member())
                    .arg(a.entry.expire_time)
                    .arg(a.entry.member())
                    .arg(a.entry.issued_at)
                    .arg(a.expired_before)
                    .arg(a.cap)
                    .arg(a.ttl_seconds.max(1))
                    .arg(a.issued_before)
                    .arg(a.name);
                let added: i64 = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                Ok(added == 1)
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
                    self.release(&mut conn, subject, &record, 0).await;
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
