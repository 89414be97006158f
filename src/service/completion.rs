//! How an upload ends: CompleteUpload (the gateway stored the file), or the abandonment
//! sweep (no completion within `--completion-window` of the consume). Either way the upload's
//! notification is queued in the outbox ([`crate::store::Outbox`]) and an event published.
//!
//! Order of steps, so that no crash loses a notification: the record step first (one atomic
//! step on the record), then the outbox step (one atomic step that drops the upload from the
//! awaiting index and queues its notification). A crash in between leaves the upload in the
//! awaiting index, where the sweep finds it and queues the notification from the record.

use tracing::{debug, warn};

use super::{UseCases, about, record_of};
use crate::audit::{Event, EventKind};
use crate::clock::rfc3339;
use crate::notify::Outcome;
use crate::notify::body::{self, NEW_FILE_UPLOAD, UPLOAD_ABANDONED, UploadFacts};
use crate::reason::Reason;
use crate::refusal::Refusal;
use crate::signature::{self, Claims, Parsed};
use crate::store::{
    CompleteOutcome, DueUpload, Outgoing, Record, RecordKey, RecordState, Store, StoreError, Sweep,
    Upload, UploadContext,
};

/// Longest `file_id` accepted, in bytes.
pub const MAX_FILE_ID_LEN: usize = 256;
/// Longest `media_url` accepted, in bytes.
pub const MAX_MEDIA_URL_LEN: usize = 2048;
/// Longest `media_type` accepted, in bytes.
pub const MAX_MEDIA_TYPE_LEN: usize = 64;
/// Due uploads one sweep pass handles per shard; the rest wait for the next pass.
const SWEEP_BATCH: usize = 256;

/// CompleteUpload's input.
#[derive(Clone, Debug, Default)]
pub struct CompleteRequest {
    /// The signature the upload was consumed with.
    pub signature: String,
    /// The platform's id of the stored file.
    pub file_id: String,
    /// Bytes stored.
    pub file_size: u64,
    /// Where the file can be fetched or played.
    pub media_url: String,
    /// Its type, e.g. `mp4`.
    pub media_type: String,
}

/// CompleteUpload's answer.
#[derive(Clone, Debug)]
pub struct CompletedUpload {
    /// What the signature says.
    pub claims: Claims,
    /// When it completed, Unix seconds (the first call's on a repeat).
    pub completed_at: i64,
    /// Completed after it was marked abandoned.
    pub late: bool,
}

/// What one sweep pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Whether this replica holds the sweep's lease (only one sweeps at a time).
    pub leased: bool,
    /// Uploads marked abandoned (or whose abandonment was queued late, after a crash).
    pub abandoned: u64,
    /// Completions whose notification was queued by the sweep (a crash had left it).
    pub recovered: u64,
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Refusal> {
    if value.len() > max {
        return Err(Refusal::invalid(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    Ok(())
}

impl<S: Store> UseCases<S> {
    /// The completion window, seconds.
    pub(super) fn completion_window(&self) -> i64 {
        self.settings
            .lifecycle
            .completion_window
            .as_secs()
            .min(i64::MAX as u64) as i64
    }

    /// CompleteUpload: the gateway stored the file. CONSUMED (or ABANDONED: then late)
    /// becomes COMPLETED and the notification is queued; the same `file_id` again answers
    /// the first call's success. The signature's clock is not checked: an upload may outlive
    /// its signature.
    pub async fn complete_upload(&self, req: CompleteRequest) -> Result<CompletedUpload, Refusal> {
        if req.file_id.is_empty() {
            return Err(Refusal::invalid("file_id is required"));
        }
        check_len("file_id", &req.file_id, MAX_FILE_ID_LEN)?;
        check_len("media_url", &req.media_url, MAX_MEDIA_URL_LEN)?;
        check_len("media_type", &req.media_type, MAX_MEDIA_TYPE_LEN)?;
        let parsed = self.authenticate(&req.signature)?;
        about(&parsed, self.complete_parsed(&parsed, req).await)
    }

    /// CompleteUpload once the signature is authentic.
    async fn complete_parsed(
        &self,
        parsed: &Parsed,
        req: CompleteRequest,
    ) -> Result<CompletedUpload, Refusal> {
        let claims = &parsed.claims;
        if let Some(max) = claims.policy.max_file_size
            && req.file_size > max
        {
            // The gateway should never have stored it: recorded, and the upload stays
            // consumed (it will be marked abandoned unless a right-sized file completes it).
            self.publish(
                EventKind::CompleteRefused,
                Some(claims),
                "",
                Reason::FileTooLarge.as_str(),
            );
            return Err(Refusal::new(
                Reason::FileTooLarge,
                format!(
                    "file_size {} is above the signature's maxFileSize {max}; the upload was not \
                     completed",
                    req.file_size
                ),
            ));
        }
        let upload = Upload {
            file_id: req.file_id,
            file_size: req.file_size,
            media_type: req.media_type,
            media_url: req.media_url,
        };
        let fp = signature::fingerprint(&parsed.tag);
        let now = self.clock.now();
        let (at, late, repeat, consumed_at, subject) = match self
            .store
            .complete(record_of(parsed, &fp), now, &upload)
            .await?
        {
            CompleteOutcome::Completed {
                at,
                late,
                repeat,
                consumed_at,
                subject,
            } => (at, late, repeat, consumed_at, subject),
            CompleteOutcome::OtherFile { at, file_id } => {
                return Err(Refusal::new(
                    Reason::UploadAlreadyCompleted,
                    format!(
                        "the upload was completed at {} with another file id ({})",
                        rfc3339(at),
                        shown(&file_id)
                    ),
                ));
            }
            CompleteOutcome::Refused(state) => return Err(completion_refusal(state)),
        };
        // The subject is looked up only for the notification (an extra read); events name
        // the subject at issue only, as every other event of the signature.
        let delivery = self.settings.lifecycle.delivery.is_on();
        let name = if delivery {
            self.subject_of(&subject).await?
        } else {
            String::new()
        };
        let facts = UploadFacts {
            secret_id: &claims.secret_id,
            random: claims.random,
            issued_at: claims.current_time_stamp,
            subject: &name,
            source_context: claims.policy.source_context.as_deref().unwrap_or(""),
            storage_region: claims.policy.storage_region.as_deref().unwrap_or(""),
            class_id: claims.policy.class_id.unwrap_or(0),
            consumed_at,
        };
        let body = || body::new_file_upload(&facts, &upload, at, late);
        // The first completion queues always (a late one finds its upload gone from the
        // awaiting index); a repeat only if the first one's outbox step never happened.
        self.queue(&facts, NEW_FILE_UPLOAD, body, !repeat).await?;
        if !repeat {
            self.events.publish(Event {
                kind: EventKind::Completed,
                secret_id: claims.secret_id.clone(),
                random: claims.random,
                subject: String::new(),
                source_context: facts.source_context.to_owned(),
                reason: String::new(),
                file_id: upload.file_id,
                time: at,
            });
        }
        Ok(CompletedUpload {
            claims: parsed.claims.clone(),
            completed_at: at,
            late,
        })
    }

    /// The subject whose digest a record holds (empty: none, or forgotten).
    async fn subject_of(&self, digest: &str) -> Result<String, StoreError> {
        if digest.is_empty() {
            return Ok(String::new());
        }
        Ok(self.store.subject_name(digest).await?.unwrap_or_default())
    }

    /// The outbox step of an upload's notification; answers whether its upload was still
    /// in the awaiting index (this step took it out).
    /// `body` makes the notification's body: only when notifications are on (with them off
    /// the step only drops the upload from the awaiting index).
    async fn queue(
        &self,
        facts: &UploadFacts<'_>,
        event_type: &str,
        body: impl FnOnce() -> String,
        always: bool,
    ) -> Result<bool, StoreError> {
        let delivery = self.settings.lifecycle.delivery.is_on();
        let (webhook_id, body) = if delivery {
            (body::webhook_id(facts, event_type), body())
        } else {
            (String::new(), String::new())
        };
        let taken = self
            .store
            .queue(
                &Outgoing {
                    record: RecordKey {
                        secret_id: facts.secret_id,
                        random: facts.random,
                    },
                    context: UploadContext {
                        source_context: facts.source_context,
                        storage_region: facts.storage_region,
                        class_id: facts.class_id,
                    },
                    webhook_id: &webhook_id,
                    event_type,
                    body: &body,
                },
                always,
                delivery,
            )
            .await?;
        if delivery && (taken || always) {
            self.lifecycle.notifications(Outcome::Queued, 1);
        }
        Ok(taken)
    }

    /// One pass of the abandonment sweep, if this replica (`owner`) holds the sweep's lease:
    /// every upload due in the awaiting index is looked at once.
    pub async fn sweep_abandoned(&self, owner: &str) -> Result<SweepReport, StoreError> {
        let lease = self.settings.lifecycle.sweep_period() * 3;
        let mut report = SweepReport::default();
        if !self.store.lease_sweep(owner, lease).await? {
            return Ok(report);
        }
        report.leased = true;
        let now = self.clock.now();
        for due in self.store.due_uploads(now, SWEEP_BATCH).await? {
            match self
                .store
                .sweep(due.key(), now, self.completion_window())
                .await?
            {
                Sweep::NotYet { due: next } => self.store.settle(&due, Some(next)).await?,
                Sweep::Nothing => self.store.settle(&due, None).await?,
                Sweep::Abandoned { record } => {
                    let taken = self
                        .queue_from_record(&due, &record, UPLOAD_ABANDONED)
                        .await?;
                    if taken {
                        report.abandoned += 1;
                        self.lifecycle.abandoned(1);
                        self.events.publish(Event {
                            kind: EventKind::Abandoned,
                            secret_id: due.secret_id.clone(),
                            random: due.random,
                            subject: String::new(),
                            source_context: due.source_context.clone(),
                            reason: String::new(),
                            file_id: String::new(),
                            time: record.changed_at,
                        });
                    }
                }
                Sweep::Completed { record } => {
                    if self
                        .queue_from_record(&due, &record, NEW_FILE_UPLOAD)
                        .await?
                    {
                        report.recovered += 1;
                        warn!(secret_id = %due.secret_id, random = due.random, "queued the notification of a completion whose own call did not (a crash in between)");
                    }
                }
            }
        }
        if report.abandoned > 0 {
            debug!(abandoned = report.abandoned, "uploads marked abandoned");
        }
        Ok(report)
    }

    /// The outbox step for an upload the sweep found, with the body rebuilt from its record;
    /// answers whether this step took the upload out of the awaiting index.
    async fn queue_from_record(
        &self,
        due: &DueUpload,
        record: &Record,
        event_type: &str,
    ) -> Result<bool, StoreError> {
        let name = if self.settings.lifecycle.delivery.is_on() {
            self.subject_of(&record.subject).await?
        } else {
            String::new()
        };
        let facts = UploadFacts {
            secret_id: &due.secret_id,
            random: due.random,
            issued_at: record.issued_at,
            subject: &name,
            source_context: &due.source_context,
            storage_region: &due.storage_region,
            class_id: due.class_id,
            consumed_at: record.consumed_at,
        };
        let body = || match &record.upload {
            Some(upload) if event_type == NEW_FILE_UPLOAD => {
                body::new_file_upload(&facts, upload, record.changed_at, record.late)
            }
            _ => body::upload_abandoned(&facts, record.changed_at),
        };
        self.queue(&facts, event_type, body, false).await
    }

    /// The backlog, for the metrics: uploads awaiting completion, and the age of the oldest
    /// undelivered notification in seconds (0: none).
    pub async fn backlog(&self) -> Result<(u64, f64), StoreError> {
        let awaiting = self.store.awaiting().await?;
        let oldest = self.store.oldest_queued().await?.map_or(0.0, |ms| {
            (crate::clock::unix_now_ms().saturating_sub(ms).max(0) as f64) / 1000.0
        });
        self.lifecycle.backlog(awaiting, oldest);
        Ok((awaiting, oldest))
    }
}

/// A file id as a refusal quotes it: bounded.
fn shown(file_id: &str) -> String {
    file_id.chars().take(64).collect()
}

/// Why CompleteUpload found the record in `state` refused.
fn completion_refusal(state: RecordState) -> Refusal {
    match state {
        RecordState::Issued => Refusal::new(
            Reason::SignatureNotConsumed,
            "the signature was not consumed: ConsumeSignature comes before the upload, and \
             CompleteUpload after it",
        ),
        RecordState::Revoked { at } => Refusal::new(
            Reason::SignatureRevoked,
            format!("signature was revoked at {}", rfc3339(at)),
        ),
        _ => Refusal::new(
            Reason::SignatureNotIssued,
            "authentic, but there is no record of it (issued elsewhere, or the record is gone: a \
             completion is accepted up to twice the completion window after the consume)",
        ),
    }
}
