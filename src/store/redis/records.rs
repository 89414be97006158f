//! A signature's record in Redis: one string key, every step one command or one script on it.

use super::super::record::{
    compact_issued, compact_issued_with_subject, decode_field, encode_field,
};
use super::{
    Awaiting, CompleteOutcome, ConsumeOutcome, Record, RecordKey, RecordRef, RecordState, Records,
    RedisStore, StoreError, StoreOp, Sweep, Upload, idempotency_token, outbox, scripted_status,
};

impl RedisStore {
    /// The value of a freshly issued record. A compact form: without a subject an integer
    /// Redis stores in the key's header, with one a string short enough to share its
    /// allocation (the text form with `--text-subject-records`).
    pub(super) fn issued_value(&self, sig: &RecordRef<'_>, now: i64, subject: &str) -> String {
        let compact = if subject.is_empty() {
            compact_issued(sig.fingerprint)
        } else if self.text_subject_records {
            None
        } else {
            compact_issued_with_subject(sig.fingerprint, subject)
        };
        compact.unwrap_or_else(|| Record::issued(sig.fingerprint, now, subject).encode())
    }
}

impl Records for RedisStore {
    async fn insert_issued(
        &self,
        sig: RecordRef<'_>,
        now: i64,
        ttl_seconds: u64,
        subject: &str,
    ) -> Result<bool, StoreError> {
        self.observed
            .run(StoreOp::Issue, || async move {
                let mut conn = self.conn().await?;
                let mut set = redis::cmd("SET");
                let key = self.record_key(&sig);
                set.arg(&key)
                    .arg(self.issued_value(&sig, now, subject))
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl_seconds.max(1));
                let inserted = self
                    .bounded(&mut conn, async |c| {
                        set.query_async::<Option<String>>(c).await
                    })
                    .await?
                    .is_some();
                if inserted {
                    // A record only the old master had would vanish in a failover, and a legitimate
                    // upload would then be refused: with --min-replicas-ack, issue waits too.
                    self.replicated(&conn, &key).await?;
                }
                Ok(inserted)
            })
            .await
    }
    async fn status(&self, sig: RecordRef<'_>) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Status, || async move {
                let mut conn = self.conn().await?;
                let mut get = redis::cmd("GET");
                get.arg(self.record_key(&sig));
                let text = self
                    .bounded(&mut conn, async |c| {
                        get.query_async::<Option<String>>(c).await
                    })
                    .await?;
                Ok(text
                    .as_deref()
                    .and_then(|text| Record::decode_for(text, &sig))
                    .map_or(RecordState::NotIssued, |r| r.state_for(sig.fingerprint)))
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
                let mut conn = self.conn().await?;
                let key = self.record_key(&sig);
                let mut call = self.scripts.consume.pick(&self.memory).key(&key);
                call.arg(sig.fingerprint)
                    .arg(now)
                    .arg(idempotency_token(idempotency_key))
                    .arg(compact_issued(sig.fingerprint).unwrap_or_default())
                    .arg(sig.issued_at)
                    .arg(awaiting.keep_for.max(1))
                    .arg(&self.release_args(&sig.key));
                // The upload enters the awaiting index before the record changes (sent first,
                // answered together): a crash in between leaves an entry the sweep drops, never
                // a consumed upload nobody would mark abandoned. NX: a replay must not move the
                // entry of the consume that won.
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(self.awaiting_key(outbox::shard_of(sig.key.random)))
                    .arg("NX")
                    .arg(awaiting.due)
                    .arg(outbox::awaiting_member(&sig.key, &awaiting.context));
                let mut intent_conn = conn.clone();
                let (intent, reply) = tokio::join!(
                    self.bounded(&mut intent_conn, async |c| zadd.query_async::<i64>(c).await),
                    self.bounded(&mut conn, async |c| call.invoke_async::<Vec<String>>(c).await),
                );
                let reply = reply?;
                if let Err(e) = intent {
                    // Redis over maxmemory refuses the entry but not the consume: the upload goes
                    // on, and only its abandonment would go unnoticed.
                    tracing::warn!(error = %e, "could not enter a consumed upload in the awaiting index");
                }
                if reply.first().map(String::as_str) == Some("ok") {
                    let at = reply
                        .get(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| StoreError::reply(&reply))?;
                    // Also on an idempotent repeat: success is only promised once replicated.
                    self.replicated(&conn, &key).await?;
                    let subject = reply.get(2).map_or("", String::as_str);
                    self.release(&mut conn, subject, &sig.key).await;
                    return Ok(ConsumeOutcome::Consumed { at });
                }
                scripted_status(&reply).map(ConsumeOutcome::Refused)
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
                let mut conn = self.conn().await?;
                let key = self.record_key(&sig);
                let mut call = self.scripts.complete.pick(&self.memory).key(&key);
                call.arg(sig.fingerprint)
                    .arg(now)
                    .arg(encode_field(&upload.file_id))
                    .arg(upload.file_size)
                    .arg(encode_field(&upload.media_type))
                    .arg(encode_field(&upload.media_url))
                    .arg(compact_issued(sig.fingerprint).unwrap_or_default())
                    .arg(sig.issued_at);
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let field = |i: usize| reply.get(i).map_or("", String::as_str);
                let number = |i: usize| {
                    field(i)
                        .parse::<i64>()
                        .map_err(|_| StoreError::reply(&reply))
                };
                match field(0) {
                    outcome @ ("ok" | "repeat") => {
                        // Also on a repeat: success is only promised once replicated.
                        self.replicated(&conn, &key).await?;
                        Ok(CompleteOutcome::Completed {
                            at: number(1)?,
                            late: field(4) == "1",
                            repeat: outcome == "repeat",
                            consumed_at: number(3)?,
                            subject: field(2).to_owned(),
                        })
                    }
                    "other" => Ok(CompleteOutcome::OtherFile {
                        at: number(1)?,
                        file_id: decode_field(field(5)),
                    }),
                    _ => scripted_status(&reply).map(CompleteOutcome::Refused),
                }
            })
            .await
    }
    async fn sweep(
        &self,
        record: RecordKey<'_>,
        now: i64,
        window: i64,
    ) -> Result<Sweep, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Sweep, async move {
                let mut conn = self.conn().await?;
                let key = self.key_of(&record);
                let mut call = self.scripts.sweep.pick(&self.memory).key(&key);
                call.arg(now).arg(window);
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                match reply.first().map(String::as_str) {
                    Some("wait") => {
                        let consumed: i64 = reply
                            .get(1)
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| StoreError::reply(&reply))?;
                        Ok(Sweep::NotYet {
                            due: consumed.saturating_add(window),
                        })
                    }
                    Some("record") => {
                        let record = reply
                            .get(1)
                            .and_then(|text| Record::decode(text))
                            .ok_or_else(|| StoreError::reply(&reply))?;
                        if record.upload.is_some() {
                            Ok(Sweep::Completed { record })
                        } else {
                            // Marked by this step: replicated first, as every record change.
                            self.replicated(&conn, &key).await?;
                            Ok(Sweep::Abandoned { record })
                        }
                    }
                    _ => Ok(Sweep::Nothing),
                }
            })
            .await
    }
    async fn revoke(&self, sig: RecordRef<'_>, now: i64) -> Result<RecordState, StoreError> {
        self.observed
            .run(StoreOp::Revoke, || async move {
                let mut conn = self.conn().await?;
                let key = self.record_key(&sig);
                let mut call = self.scripts.revoke.pick(&self.memory).key(&key);
                call.arg(sig.fingerprint)
                    .arg(now)
                    .arg("")
                    .arg(compact_issued(sig.fingerprint).unwrap_or_default())
                    .arg(sig.issued_at)
                    .arg(&self.release_args(&sig.key));
                let reply: Vec<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                let before = scripted_status(&reply)?;
                if before == RecordState::Issued {
                    self.replicated(&conn, &key).await?;
                    let subject = reply.get(2).map_or("", String::as_str);
                    self.release(&mut conn, subject, &sig.key).await;
                }
                Ok(before)
            })
            .await
    }
    async fn discard(&self, sig: RecordRef<'_>, subject: &str) -> Result<(), StoreError> {
        self.observed
            .run(StoreOp::Discard, || async move {
                let mut conn = self.conn().await?;
                let mut call = self
                    .scripts
                    .discard
                    .pick(&self.memory)
                    .key(self.record_key(&sig));
                call.arg(self.issued_value(&sig, sig.issued_at, subject));
                self.bounded(&mut conn, async |c| call.invoke_async::<i64>(c).await)
                    .await
                    .map(|_| ())
            })
            .await
    }
}
