//! A subject's index in Redis: two sorted sets (the outstanding one only with a cap) and the
//! subject's name under the subject's own hash tag (one Cluster slot, shared with its quota
//! keys), beside the records (other slots).

/// Seconds a subject's index keys get beyond what the admission needs when their expiry is
/// extended: one extension per subject in this long, instead of one per issue.
const EXPIRY_ROOM: u64 = 600;

use super::{
    Admission, AdmitOutcome, ListCursor, Listed, Record, RecordKey, RecordState, RedisStore,
    StoreError, StoreOp, SubjectEntry, Subjects, scripted_status,
};
use crate::redis::Conn;

/// The short tag that names a key in a subject's index members: `~` (never in a SecretId)
/// and 24 bits of its SHA-256 in hex. A real SecretId is 36 characters: with it, a member
/// with a source context would pass the 64 bytes up to which Redis keeps a small sorted set
/// as one compact listpack (`zset-max-listpack-value`), and cost several times as much.
fn key_tag(secret_id: &str) -> String {
    format!("~{}", crate::digest::sha256_hex(secret_id.as_bytes(), 3))
}

/// The member of the outstanding index: `~{key tag}:{random}`.
fn outstanding_member(key: &RecordKey<'_>) -> String {
    format!("{}:{}", key_tag(key.secret_id), key.random)
}

/// The member of the listing index: `~{key tag}:{random}:{expireTime}:{sourceContext}`.
fn listing_member(e: &SubjectEntry) -> String {
    format!(
        "{}:{}:{}:{}",
        key_tag(&e.secret_id),
        e.random,
        e.expire_time,
        e.source_context
    )
}

/// A listing member back to its entries: one per loaded key with its tag (almost always
/// one; none once the key is unloaded, whose signatures no longer verify). A member written
/// before the tags names its SecretId in full.
fn listed_entries(member: &str, issued_at: i64, secret_ids: &[&str]) -> Vec<SubjectEntry> {
    let Some(entry) = SubjectEntry::from_member(member, issued_at) else {
        return Vec::new();
    };
    if !entry.secret_id.starts_with('~') {
        return vec![entry];
    }
    secret_ids
        .iter()
        .filter(|id| key_tag(id) == entry.secret_id)
        .map(|id| SubjectEntry {
            secret_id: (*id).to_owned(),
            ..entry.clone()
        })
        .collect()
}

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
            .arg(outstanding_member(key));
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
                call.arg(outstanding_member(&a.entry.key()))
                    .arg(a.entry.expire_time)
                    .arg(listing_member(a.entry))
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
                    .arg(outstanding_member(&entry.key()))
                    .ignore()
                    .cmd("ZREM")
                    .arg(listing)
                    .arg(listing_member(entry))
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
        secret_ids: &[&str],
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
                // Each member with its candidate entries (one, but for a key tag shared by
                // two loaded keys, or none for an unloaded key).
                let found: Vec<(ListCursor, Vec<SubjectEntry>)> = page
                    .chunks_exact(2)
                    .filter_map(|pair| {
                        let issued_at = pair[1].parse::<f64>().ok()? as i64;
                        let cursor = ListCursor {
                            issued_at,
                            member: pair[0].clone(),
                        };
                        Some((cursor, listed_entries(&pair[0], issued_at, secret_ids)))
                    })
                    .collect();
                if found.is_empty() {
                    return Ok(Vec::new());
                }
                // The records live in other slots: MGET, which the Cluster client splits by slot.
                let mut mget = redis::cmd("MGET");
                let mut asked = 0;
                for e in found.iter().flat_map(|(_, c)| c) {
                    mget.arg(self.key_of(&e.key()));
                    asked += 1;
                }
                let mut records: std::vec::IntoIter<Option<String>> = if asked == 0 {
                    Vec::new().into_iter()
                } else {
                    self.bounded(&mut conn, async |c| {
                        mget.query_async::<Vec<Option<String>>>(c).await
                    })
                    .await?
                    .into_iter()
                };
                let state_of = |text: Option<String>| {
                    text.as_deref()
                        .and_then(Record::decode)
                        .map_or(RecordState::NotIssued, |r| r.state_in_subject(subject))
                };
                // One listed entry per member, so the caller's paging counts members: the
                // candidate whose record is this subject's, else a `NotIssued` one.
                Ok(found
                    .into_iter()
                    .map(|(cursor, candidates)| {
                        let mut chosen: Option<Listed> = None;
                        for entry in candidates {
                            let state = state_of(records.next().flatten());
                            if chosen
                                .as_ref()
                                .is_none_or(|c| c.state == RecordState::NotIssued)
                            {
                                chosen = Some(Listed {
                                    entry,
                                    state,
                                    cursor: cursor.clone(),
                                });
                            }
                        }
                        chosen.unwrap_or_else(|| Listed {
                            entry: SubjectEntry {
                                secret_id: String::new(),
                                random: 0,
                                issued_at: cursor.issued_at,
                                expire_time: 0,
                                source_context: String::new(),
                            },
                            state: RecordState::NotIssued,
                            cursor,
                        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_members_name_the_key_by_a_tag_and_old_members_still_read() {
        let entry = SubjectEntry {
            secret_id: "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE".into(),
            random: 4_294_967_295,
            issued_at: 1_700_000_000,
            expire_time: 1_700_003_600,
            source_context: "user-1234/upload-56789".into(),
        };
        let member = listing_member(&entry);
        // Short enough for Redis' compact listpack encoding (64 bytes by default).
        assert!(member.len() <= 64, "{member}");
        let ids = ["AKIDother", entry.secret_id.as_str()];
        assert_eq!(
            listed_entries(&member, entry.issued_at, &ids),
            vec![entry.clone()]
        );
        // The key unloaded: nothing to list.
        assert!(listed_entries(&member, entry.issued_at, &["AKIDother"]).is_empty());
        // A member written before the tags.
        let old = format!(
            "{}:4294967295:1700003600:user-1234/upload-56789",
            entry.secret_id
        );
        assert_eq!(
            listed_entries(&old, entry.issued_at, &[]),
            vec![entry.clone()]
        );
        assert_eq!(
            outstanding_member(&entry.key()),
            format!("{}:4294967295", key_tag(&entry.secret_id))
        );
    }
}
