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

/// How many of the listing's oldest entries a tidying issue examines.
const TIDY_SCAN: usize = 16;

/// The `expireTime` of a listing member (`{tag}:{random}:{expireTime}:{sourceContext}`).
fn member_expire_time(member: &str) -> Option<i64> {
    member.split(':').nth(2)?.parse().ok()
}

/// The next reply of a transaction, typed.
fn next_reply<T: redis::FromRedisValue>(
    replies: &mut impl Iterator<Item = redis::Value>,
) -> Result<T, StoreError> {
    let value = replies
        .next()
        .ok_or_else(|| StoreError::reply("a short transaction reply"))?;
    if let redis::Value::ServerError(e) = &value
        && e.code() == "OOM"
    {
        // The quota script's first write, refused over `maxmemory`: `STORE_FULL`.
        return Err(StoreError::new(
            super::FailureCause::OutOfMemory,
            format!("Redis is over its maxmemory and refuses writes that grow memory ({e:?})"),
        ));
    }
    redis::from_redis_value(value.clone()).map_err(|_| StoreError::reply(value))
}

/// Runs an admission's transaction; when its quota script was not loaded (a restarted
/// Redis), loads it and runs the transaction again (its `ZADD`s are idempotent).
async fn transact(
    conn: &mut Conn,
    tx: &redis::Pipeline,
    script: Option<&redis::Script>,
) -> redis::RedisResult<Vec<redis::Value>> {
    let first = tx.query_async::<Vec<redis::Value>>(conn).await;
    let Some(script) = script else {
        return first;
    };
    let unloaded = match &first {
        Err(e) => e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
        Ok(replies) => matches!(
            replies.first(),
            Some(redis::Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript)
        ),
    };
    if !unloaded {
        return first;
    }
    script.prepare_invoke().load_async(conn).await?;
    tx.query_async(conn).await
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
                let out_member = outstanding_member(&a.entry.key());
                let list_member = listing_member(a.entry);
                let ttl = a.ttl_seconds.max(1);
                // Room to spare: the keys' expiry is extended once in this long, not on every
                // issue.
                let room = ttl.saturating_add(EXPIRY_ROOM);
                let cap = u64::from(a.cap);
                // One transaction (MULTI/EXEC) of plain commands on the subject's slot, one
                // round trip: the quotas' GCRA (the one script left, `quota.lua`), then the
                // entries added and the outstanding set counted with them. Plain commands
                // cost Redis a third of what the same steps cost inside a script.
                let mut tx = redis::pipe();
                tx.atomic();
                if !a.quotas.is_empty() {
                    let mut eval = redis::cmd("EVALSHA");
                    eval.arg(self.scripts.quota.get_hash()).arg(a.quotas.len());
                    for q in a.quotas {
                        eval.arg(format!("{}{}", self.prefix(), q.key));
                    }
                    for q in a.quotas {
                        eval.arg(q.interval_ms).arg(q.tolerance_ms);
                    }
                    tx.add_command(eval);
                }
                if cap > 0 {
                    tx.cmd("ZADD")
                        .arg(&outstanding)
                        .arg(a.entry.expire_time)
                        .arg(&out_member)
                        .ignore()
                        .cmd("ZCARD")
                        .arg(&outstanding);
                }
                tx.cmd("ZADD")
                    .arg(&listing)
                    .arg(a.entry.issued_at)
                    .arg(&list_member)
                    .ignore()
                    .cmd("TTL")
                    .arg(&listing);
                if a.tidy {
                    tx.cmd("ZREMRANGEBYSCORE")
                        .arg(&listing)
                        .arg("-inf")
                        .arg(format!("({}", a.issued_before))
                        .ignore()
                        .cmd("ZRANGE")
                        .arg(&listing)
                        .arg(0)
                        .arg(TIDY_SCAN - 1);
                }
                let quota_script = (!a.quotas.is_empty()).then_some(&self.scripts.quota);
                let mut replies = self
                    .bounded(&mut conn, async |c| transact(c, &tx, quota_script).await)
                    .await?
                    .into_iter();
                let undo = |pipe: &mut redis::Pipeline| {
                    if cap > 0 {
                        pipe.cmd("ZREM").arg(&outstanding).arg(&out_member).ignore();
                    }
                    pipe.cmd("ZREM").arg(&listing).arg(&list_member).ignore();
                };
                if !a.quotas.is_empty() {
                    let (index, wait_ms): (i64, u64) = next_reply(&mut replies)?;
                    if index != 0 {
                        let q = usize::try_from(index - 1)
                            .ok()
                            .and_then(|i| a.quotas.get(i))
                            .ok_or_else(|| {
                                StoreError::reply(&[index.to_string(), wait_ms.to_string()])
                            })?;
                        // Refused: nothing charged; the entries added meanwhile are taken
                        // back (until then a racing issue may see the cap stricter).
                        let mut pipe = redis::pipe();
                        undo(&mut pipe);
                        self.bounded(&mut conn, async |c| pipe.query_async::<()>(c).await)
                            .await?;
                        return Ok(AdmitOutcome::RateLimited {
                            name: q.name,
                            retry_after: std::time::Duration::from_millis(wait_ms),
                        });
                    }
                }
                let count: u64 = if cap > 0 {
                    next_reply(&mut replies)?
                } else {
                    0
                };
                let ttl_left: i64 = next_reply(&mut replies)?;
                let oldest: Vec<String> = if a.tidy {
                    next_reply(&mut replies)?
                } else {
                    Vec::new()
                };
                if count > cap {
                    // Over the cap with this entry: expired entries leave (only here, when
                    // they could refuse an issue), then it counts again.
                    let mut pipe = redis::pipe();
                    pipe.cmd("ZREMRANGEBYSCORE")
                        .arg(&outstanding)
                        .arg("-inf")
                        .arg(format!("({}", a.expired_before))
                        .ignore()
                        .cmd("ZCARD")
                        .arg(&outstanding);
                    let (again,): (u64,) = self
                        .bounded(&mut conn, async |c| pipe.query_async(c).await)
                        .await?;
                    if again > cap {
                        let mut pipe = redis::pipe();
                        undo(&mut pipe);
                        self.bounded(&mut conn, async |c| pipe.query_async::<()>(c).await)
                            .await?;
                        return Ok(AdmitOutcome::Capped);
                    }
                }
                // Upkeep, on few issues: the keys' expiry when short (or a new outstanding
                // set, which `ZADD` created without one), and the listing's oldest expired
                // entries on a tidying issue.
                let mut pipe = redis::pipe();
                let mut upkeep = false;
                if ttl_left < i64::try_from(ttl).unwrap_or(i64::MAX) {
                    pipe.cmd("EXPIRE").arg(&listing).arg(room).ignore();
                    pipe.cmd("SET")
                        .arg(self.subject_name_key(a.subject))
                        .arg(a.name)
                        .arg("EX")
                        .arg(room.saturating_add(a.keep_seconds))
                        .ignore();
                    if cap > 0 {
                        pipe.cmd("EXPIRE").arg(&outstanding).arg(room).ignore();
                    }
                    upkeep = true;
                } else if cap > 0 && count == 1 {
                    pipe.cmd("EXPIRE").arg(&outstanding).arg(room).ignore();
                    upkeep = true;
                }
                let stale: Vec<&String> = oldest
                    .iter()
                    .filter(|m| member_expire_time(m).is_none_or(|exp| exp < a.expired_before))
                    .collect();
                if !stale.is_empty() {
                    pipe.cmd("ZREM").arg(&listing).arg(stale).ignore();
                    upkeep = true;
                }
                if upkeep {
                    self.bounded(&mut conn, async |c| pipe.query_async::<()>(c).await)
                        .await?;
                }
                Ok(AdmitOutcome::Admitted)
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
