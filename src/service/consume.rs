//! ConsumeSignature: the upload gateway uses a signature up, atomically, and the upload
//! starts waiting for its completion. (The upload's end, CompleteUpload, is in
//! `completion.rs`.)

use super::{
    ConsumeRequest, Consumed, MAX_IDEMPOTENCY_KEY_LEN, UseCases, about, fingerprint_of, record_of,
    refusal_for,
};
use crate::audit::EventKind;
use crate::reason::Reason;
use crate::refusal::Refusal;
use crate::signature::{self, Parsed};
use crate::store::{Awaiting, ConsumeOutcome, Store, UploadContext};

impl<S: Store> UseCases<S> {
    /// ConsumeSignature: checks the signature and uses it up, atomically. Every refusal is an
    /// audit event too.
    pub async fn consume(&self, req: ConsumeRequest) -> Result<Consumed, Refusal> {
        let result = self.consume_checked(&req).await;
        if let Err(refusal) = &result {
            // The nonce it claimed, when it parses at all (a second parse, on refusals only).
            let claims = signature::parse(&req.signature).ok().map(|p| p.claims);
            self.publish(
                EventKind::ConsumeRefused,
                claims.as_ref(),
                "",
                refusal.reason.as_str(),
            );
        }
        result
    }

    /// Order: authenticity, then the clock, then `maxFileSize`, then the store, so a
    /// `FILE_TOO_LARGE` refusal never touches the record.
    async fn consume_checked(&self, req: &ConsumeRequest) -> Result<Consumed, Refusal> {
        if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(Refusal::invalid(format!(
                "idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_LEN} bytes"
            )));
        }
        let parsed = self.authenticate(&req.signature)?;
        about(&parsed, self.consume_parsed(&parsed, req).await)
    }

    /// ConsumeSignature once the signature is authentic.
    async fn consume_parsed(
        &self,
        parsed: &Parsed,
        req: &ConsumeRequest,
    ) -> Result<Consumed, Refusal> {
        signature::check_time(&parsed.claims, self.clock.now(), self.leeway())?;
        if let Some(max) = parsed.claims.policy.max_file_size {
            match req.file_size {
                None => {
                    return Err(Refusal::invalid(format!(
                        "file_size is required: the signature limits uploads to {max} bytes"
                    )));
                }
                Some(size) if size > max => {
                    return Err(Refusal::new(
                        Reason::FileTooLarge,
                        format!(
                            "file_size {size} is above the signature's maxFileSize {max}; the signature stays unused"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let fp = fingerprint_of(parsed);
        let now = self.clock.now();
        let policy = &parsed.claims.policy;
        let awaiting = Awaiting {
            context: UploadContext {
                source_context: policy.source_context.as_deref().unwrap_or(""),
                storage_region: policy.storage_region.as_deref().unwrap_or(""),
                class_id: policy.class_id.unwrap_or(0),
            },
            due: now.saturating_add(self.completion_window()),
            keep_for: self.settings.lifecycle.keep_consumed_for(),
        };
        match self
            .store
            .consume(record_of(parsed, &fp), now, &req.idempotency_key, awaiting)
            .await?
        {
            ConsumeOutcome::Consumed { at } => {
                self.publish(EventKind::Consumed, Some(&parsed.claims), "", "");
                Ok(Consumed {
                    claims: parsed.claims.clone(),
                    consumed_at: at,
                })
            }
            ConsumeOutcome::Refused(state) => Err(refusal_for(state)),
        }
    }
}
