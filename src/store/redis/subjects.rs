//! A subject's index in Redis: two sorted sets (the outstanding one only with a cap) and the
//! subject's name under the subject's own hash tag (one Cluster slot, shared with its quota
//! keys), beside the records (other slots).

/// Seconds a subject's index keys get beyond what the admission needs when their expiry is
/// extended: one extension per subject in this long, instead of one per issue.
const EXPIRY_ROOM: u64 = 600;

use super::{
    Admission, AdmitOutcome, ListCursor, Listed, Record, RecordKey, RecordState, Records,
    RedisStore, StoreError, StoreOp, SubjectEntry, Subjects, scripted_status,
};
use crate::quota::Charge;
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

/// The next reply of a transaction, typed.
fn next_reply<T: redis::FromRedisValue>(
    replies: &mut impl Iterator<Item = redis::Value>,
) -> Result<T, StoreError> {
    let value = replies
        .next()
        .ok_or_else(|| StoreError::reply("a short transaction reply"))?;
    redis::from_redis_value(value.clone()).map_err(|_| StoreError::reply(value))
}

/// The member of a subject's quota key that holds its GCRA state (the theoretical arrival
/// time, ms, as its score).
const TAT_MEMBER: &str = "t";

/// Milliseconds a quota key outlives what its TAT needs: it only frees memory (a stale TAT
/// counts as now), so a replica whose clock lags cannot make it expire early.
const QUOTA_SLACK_MS: u64 = 60_000;

/// One quota's GCRA step as plain commands, queued in the admission's transaction: the TAT
/// raised to now if behind (`ZADD GT`), then charged one interval (`ZINCRBY`, whose reply is
/// the new TAT), and the key's expiry pushed past it.
fn charge_quota(tx: &mut redis::Pipeline, key: &str, q: &Charge, now_ms: u64) {
    tx.cmd("ZADD")
        .arg(key)
        .arg("GT")
        .arg(now_ms)
        .arg(TAT_MEMBER)
        .ignore()
        .cmd("ZINCRBY")
        .arg(key)
        .arg(q.interval_ms)
        .arg(TAT_MEMBER)
        .cmd("PEXPIRE")
        .arg(key)
        .arg(
            q.interval_ms
                .saturating_add(q.tolerance_ms)
                .saturating_add(QUOTA_SLACK_MS),
        )
        .ignore();
}

/// The GCRA verdict on a charge already made: `tat` is the TAT after it. Allowed when the TAT
/// before it (`tat` less one interval) was within the tolerance of now (`crate::quota::gcra`),
/// else how long to wait, ms.
fn quota_verdict(tat: u64, now_ms: u64, q: &Charge) -> Result<(), u64> {
    // The TAT before the charge, raised to now, is `tat` less one interval.
    crate::quota::gcra(
        tat.saturating_sub(q.interval_ms),
        now_ms,
        q.interval_ms,
        q.tolerance_ms,
    )
    .map(drop)
}

impl RedisStore {
    /// The key of a subject's quota: a sorted set whose one member's score is its TAT
    /// (`{prefix}quota:{<digest>}:<quota>:t`; the string keys of earlier versions, which Lua
    /// updated, are left to expire).
    fn quota_key(&self, q: &Charge) -> String {
        format!("{}{}:{TAT_MEMBER}", self.prefix(), q.key)
    }

    /// Takes back what a refused admission's transaction charged and added. The refusal
    /// stands when this fails: the charge and the entries then stay until they expire (the
    /// quota and the cap stricter meanwhile, never looser).
    async fn take_back(&self, conn: &mut Conn, pipe: &redis::Pipeline) {
        if let Err(e) = self
            .bounded(conn, async |c| pipe.query_async::<()>(c).await)
            .await
        {
            tracing::warn!(error = %e, "could not take back a refused issue's quota charge and index entries; they stay until they expire");
        }
    }

    /// The arguments with which a record script (consume, revoke) releases the record's
    /// entry from its subject's outstanding set itself, in the same step (`release` in
    /// `record.lua`): on one server. Empty on Redis Cluster, where the set lives in another
    /// slot than the record ([`RedisStore::release`] then does it).
    pub(super) fn release_args(&self, key: &RecordKey<'_>) -> [String; 3] {
        if !self.one_node {
            return Default::default();
        }
        let (head, tail) = self.outstanding_key_around();
        [head, tail.to_owned(), outstanding_member(key)]
    }

    /// After a record left `issued` (consume, revoke) on Redis Cluster: its subject's cap no
    /// longer counts it. One plain `ZREM` (never refused over `maxmemory`): the subject's name
    /// already lives as long as a consumed upload may complete (the admission gave it that
    /// TTL). The index lives in another slot than the record, so this is a second step; when
    /// it fails, the entry stays until its expiry (the cap is then stricter, never looser). On
    /// one server the record's script did it ([`RedisStore::release_args`]).
    pub(super) async fn release(&self, conn: &mut Conn, subject: &str, key: &RecordKey<'_>) {
        if subject.is_empty() || self.one_node {
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
        let record = a.record();
        if !self.one_node
            && !self
                .insert_issued(record, a.entry.issued_at, a.ttl_seconds, a.subject)
                .await?
        {
            // Redis Cluster: the record lives in another slot than the subject's keys, so it
            // is written on its own first (and waits for its replicas there).
            return Ok(AdmitOutcome::Taken);
        }
        // On one server the transaction writes the record too: observed as the issue's write.
        let op = if self.one_node {
            StoreOp::Issue
        } else {
            StoreOp::Admit
        };
        self.observed
            .run(op, || async move {
                let mut conn = self.conn().await?;
                let record_key = self.record_key(&record);
                let (outstanding, listing) = self.subject_keys(a.subject);
                let out_member = outstanding_member(&a.entry.key());
                let list_member = listing_member(a.entry);
                let ttl = a.ttl_seconds.max(1);
                // Room to spare: the keys' expiry is extended once in this long, not on every
                // issue.
                let room = ttl.saturating_add(EXPIRY_ROOM);
                let cap = u64::from(a.cap);
                // One transaction (MULTI/EXEC) of plain commands on the subject's slot, one
                // round trip, no script: on one server the record's `SET NX` first, then each
                // quota's GCRA step, then the entries added and the outstanding set counted
                // with them. The same steps inside a script cost Redis about twice as much.
                let now_ms = u64::try_from(crate::clock::unix_now_ms()).unwrap_or(0);
                let mut tx = redis::pipe();
                tx.atomic();
                if self.one_node {
                    tx.cmd("SET")
                        .arg(&record_key)
                        .arg(self.issued_value(&record, a.entry.issued_at, a.subject))
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl);
                }
                for q in a.quotas {
                    charge_quota(&mut tx, &self.quota_key(q), q, now_ms);
                }
                // Each `ZADD` answers whether it added its entry (1) or found it (0): a taken
                // nonce takes back only what it added.
                if cap > 0 {
                    tx.cmd("ZADD")
                        .arg(&outstanding)
                        .arg(a.entry.expire_time)
                        .arg(&out_member)
                        .cmd("ZCARD")
                        .arg(&outstanding);
                }
                tx.cmd("ZADD")
                    .arg(&listing)
                    .arg(a.entry.issued_at)
                    .arg(&list_member)
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
                let mut replies = self
                    .bounded(&mut conn, async |c| {
                        tx.query_async::<Vec<redis::Value>>(c).await
                    })
                    .await?
                    .into_iter();
                let written = if self.one_node {
                    next_reply::<Option<String>>(&mut replies)?.is_some()
                } else {
                    true
                };
                // Each quota's new TAT.
                let tats = a
                    .quotas
                    .iter()
                    .map(|_| next_reply::<f64>(&mut replies))
                    .collect::<Result<Vec<_>, _>>()?;
                let (out_added, count): (i64, u64) = if cap > 0 {
                    (next_reply(&mut replies)?, next_reply(&mut replies)?)
                } else {
                    (0, 0)
                };
                let list_added: i64 = next_reply(&mut replies)?;
                let ttl_left: i64 = next_reply(&mut replies)?;
                let oldest: Vec<String> = if a.tidy {
                    next_reply(&mut replies)?
                } else {
                    Vec::new()
                };
                // What a refused or taken issue takes back: every quota's charge and its
                // entries (until then a racing issue sees them: refused stricter, never
                // looser). `ours`: the record is this issue's, so are the entries under its
                // nonce; else (a taken nonce) an entry it found is the record holder's, and
                // stays.
                let take_back = |pipe: &mut redis::Pipeline, ours: bool| {
                    for q in a.quotas {
                        pipe.cmd("ZINCRBY")
                            .arg(self.quota_key(q))
                            .arg(-(q.interval_ms as f64))
                            .arg(TAT_MEMBER)
                            .ignore();
                    }
                    if cap > 0 && (ours || out_added == 1) {
                        pipe.cmd("ZREM").arg(&outstanding).arg(&out_member).ignore();
                    }
                    if ours || list_added == 1 {
                        pipe.cmd("ZREM").arg(&listing).arg(&list_member).ignore();
                    }
                };
                if !written {
                    let mut pipe = redis::pipe();
                    take_back(&mut pipe, false);
                    self.take_back(&mut conn, &pipe).await;
                    return Ok(AdmitOutcome::Taken);
                }
                // The first quota over its tolerance refuses.
                let refused = a.quotas.iter().zip(&tats).find_map(|(q, tat)| {
                    quota_verdict(*tat as u64, now_ms, q)
                        .err()
                        .map(|wait_ms| (q.name, wait_ms))
                });
                if let Some((name, wait_ms)) = refused {
                    let mut pipe = redis::pipe();
                    take_back(&mut pipe, true);
                    self.take_back(&mut conn, &pipe).await;
                    return Ok(AdmitOutcome::RateLimited {
                        name,
                        retry_after: std::time::Duration::from_millis(wait_ms),
                    });
                }
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
                        // The quotas stay charged: a capped issue still counts as one.
                        let mut pipe = redis::pipe();
                        pipe.cmd("ZREM").arg(&outstanding).arg(&out_member).ignore();
                        pipe.cmd("ZREM").arg(&listing).arg(&list_member).ignore();
                        self.take_back(&mut conn, &pipe).await;
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
                    .filter(|m| {
                        SubjectEntry::from_member(m, 0)
                            .is_none_or(|e| e.expire_time < a.expired_before)
                    })
                    .collect();
                if !stale.is_empty() {
                    pipe.cmd("ZREM").arg(&listing).arg(stale).ignore();
                    upkeep = true;
                }
                if upkeep {
                    self.bounded(&mut conn, async |c| pipe.query_async::<()>(c).await)
                        .await?;
                }
                if self.one_node {
                    self.replicated(&conn, &record_key).await?;
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
        entry: &SubjectEntry,
        subject: &str,
        now: i64,
    ) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Revoke, || async move {
                if subject.is_empty() {
                    return Ok(RecordState::NotIssued);
                }
                let mut conn = self.conn().await?;
                let record = entry.key();
                let key = self.key_of(&record);
                let mut call = self.scripts.revoke.pick(&self.memory).key(&key);
                // The issue time, for a record in the compact subject form (which lacks it).
                call.arg("")
                    .arg(now)
                    .arg(subject)
                    .arg("")
                    .arg(entry.issued_at)
                    .arg(&self.release_args(&record));
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
    fn the_plain_command_quota_step_decides_what_gcra_does() {
        let q = Charge {
            key: String::new(),
            interval_ms: 100,
            tolerance_ms: 450,
            name: "subject",
        };
        let (mut stored, mut reference) = (0u64, 0u64);
        for now in [
            1_000, 1_000, 1_001, 1_002, 1_003, 1_004, 1_010, 1_200, 1_201, 5_000, 5_000,
        ] {
            // ZADD GT, then ZINCRBY; a refusal takes the interval back (ZINCRBY -interval).
            stored = stored.max(now) + q.interval_ms;
            let verdict = quota_verdict(stored, now, &q);
            if verdict.is_err() {
                stored -= q.interval_ms;
            }
            let expected = crate::quota::gcra(reference, now, q.interval_ms, q.tolerance_ms);
            match expected {
                Ok(tat) => {
                    reference = tat;
                    assert_eq!(verdict, Ok(()), "at {now}");
                }
                Err(wait) => assert_eq!(verdict, Err(wait), "at {now}"),
            }
            assert_eq!(stored.max(now), reference.max(now), "at {now}");
        }
    }

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
