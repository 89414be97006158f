//! IssueSignature: validate the request, charge the quotas, record a fresh nonce, sign.

use tracing::debug;

use super::{IssueRequest, Issued, MAX_NONCE_TRIES, MAX_SUBJECT_LEN, UseCases};
use crate::audit::EventKind;
use crate::quota::{self, Charge, Scope};
use crate::reason::Reason;
use crate::refusal::Refusal;
use crate::signature::{self, SignRequest};
use crate::store::{
    Admission, AdmitOutcome, QuotaOutcome, RecordKey, RecordRef, Store, SubjectEntry, TIDY_EVERY,
    subject_digest,
};

impl<S: Store> UseCases<S> {
    /// IssueSignature: records a fresh nonce, then returns the signature (only once the store
    /// acknowledged the record).
    pub async fn issue(&self, req: IssueRequest) -> Result<Issued, Refusal> {
        let ttl = if req.ttl_seconds == 0 {
            self.settings.default_ttl
        } else {
            req.ttl_seconds
        };
        if ttl > self.settings.max_ttl {
            return Err(Refusal::invalid(format!(
                "ttl_seconds {ttl} is above the maximum of {} seconds",
                self.settings.max_ttl
            )));
        }
        if req.subject.len() > MAX_SUBJECT_LEN {
            return Err(Refusal::invalid(format!(
                "subject is longer than {MAX_SUBJECT_LEN} bytes"
            )));
        }
        req.policy
            .validate()
            .map_err(|e| Refusal::invalid(format!("policy: {e}")))?;
        let keys = self.keys.load_full();
        let (secret_id, key) = if req.secret_id.is_empty() {
            // The active key, which a reload may have found removed: refuse rather than
            // fall back on another key nobody chose to issue with.
            let key = keys.active_key().cloned().ok_or_else(|| {
                Refusal::new(
                    Reason::NoActiveKey,
                    format!(
                        "the active key {:?} is not in the keys directory; nothing is issued until \
                         it is back (or another key is made active); verify, consume and revoke go on",
                        keys.active_id()
                    ),
                )
            })?;
            (keys.active_id(), key)
        } else {
            // A key named by the caller issues whenever it is loaded, active or not.
            let secret_id = req.secret_id.as_str();
            let key = keys.get(secret_id).cloned().ok_or_else(|| {
                let shown: String = secret_id.chars().take(128).collect();
                Refusal::new(
                    Reason::UnknownSecretId,
                    format!("no key with secret_id {shown:?}"),
                )
            })?;
            (secret_id, key)
        };

        // Before the quotas: a refused issue must not use up a subject's quota, nor write.
        self.store.accepts_issues()?;
        // No subject: no index work at all.
        let subject = (!req.subject.is_empty()).then(|| subject_digest(&req.subject));
        // With a subject, the per-subject quotas are charged by its admission below, in the
        // same atomic step as its index (one transaction on the subject's slot), and the
        // per-SecretId ones after it, as before: a refused per-subject quota charges no other.
        let (mut subject_quotas, mut secret_quotas) = (Vec::new(), Vec::new());
        if !self.settings.quotas.is_empty() {
            (subject_quotas, secret_quotas) = self.quota_groups(subject.as_deref(), secret_id)?;
            if req.subject.is_empty() {
                // Boxed, as the subject index step below: large futures held inline would be
                // moved on every call, also by callers that use neither.
                Box::pin(self.charge(std::mem::take(&mut secret_quotas))).await?;
            }
        }
        let now = self.clock.now();
        let record_ttl = ttl.saturating_add(self.settings.leeway);
        for _ in 0..MAX_NONCE_TRIES {
            let signed = signature::sign(
                &key,
                &SignRequest {
                    secret_id,
                    current_time_stamp: now,
                    expire_time: now.saturating_add(ttl as i64),
                    random: rand::random(),
                    one_time_valid: true,
                    policy: &req.policy,
                },
            );
            let fingerprint = signature::fingerprint(&signed.tag);
            let record = RecordRef {
                key: RecordKey {
                    secret_id,
                    random: signed.claims.random,
                },
                fingerprint: &fingerprint,
                issued_at: now,
            };
            let recorded = match &subject {
                None => {
                    self.store
                        .insert_issued(record, now, record_ttl, "")
                        .await?
                }
                // With a subject, its admission writes the record (in the same transaction
                // where the store can); a taken nonce charges nothing, so the next try
                // charges the quotas afresh.
                Some(digest) => {
                    Box::pin(self.admit(
                        digest,
                        &req.subject,
                        &signed.claims,
                        &fingerprint,
                        record_ttl,
                        &subject_quotas,
                        &mut secret_quotas,
                    ))
                    .await?
                }
            };
            if recorded {
                // On the span only: nothing can refuse the call any more.
                super::note_on_span(secret_id, signed.claims.random);
                debug!(subject = %req.subject, "issued");
                self.publish(EventKind::Issued, Some(&signed.claims), &req.subject, "");
                return Ok(Issued {
                    signature: signed.signature,
                    claims: signed.claims,
                });
            }
            debug!(
                secret_id,
                random = signed.claims.random,
                "nonce collision, picking another"
            );
        }
        Err(Refusal::new(
            Reason::StoreUnavailable,
            format!("no free nonce after {MAX_NONCE_TRIES} tries; nothing was issued"),
        ))
    }

    /// Records a signature and puts it in its subject's index, charging the per-subject
    /// `quotas` and checking the outstanding cap in the same step, then charges the
    /// per-SecretId quotas (`secret`, taken once charged). When one of them refuses (or the
    /// store fails), the record is deleted again: its signature was never handed out. `false`:
    /// the nonce was taken, nothing written nor charged.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        digest: &str,
        subject: &str,
        claims: &crate::signature::Claims,
        fingerprint: &str,
        record_ttl: u64,
        quotas: &[Charge],
        secret: &mut Vec<Charge>,
    ) -> Result<bool, Refusal> {
        let entry = SubjectEntry {
            secret_id: claims.secret_id.clone(),
            random: claims.random,
            issued_at: claims.current_time_stamp,
            expire_time: claims.expire_time,
            source_context: claims.policy.source_context.clone().unwrap_or_default(),
        };
        let cap = self.settings.max_outstanding_per_subject;
        let longest = self.settings.max_ttl.saturating_add(self.settings.leeway);
        let admission = Admission {
            subject: digest,
            name: subject,
            entry: &entry,
            fingerprint,
            cap,
            expired_before: self.clock.now().saturating_sub(self.leeway()),
            ttl_seconds: record_ttl,
            keep_seconds: self.settings.lifecycle.keep_consumed_for(),
            issued_before: claims
                .current_time_stamp
                .saturating_sub(longest.min(i64::MAX as u64) as i64),
            quotas,
            tidy: claims.random.is_multiple_of(TIDY_EVERY),
        };
        let refusal = match self.store.admit(admission).await {
            Ok(AdmitOutcome::Taken) => return Ok(false),
            Ok(AdmitOutcome::Admitted) if secret.is_empty() => return Ok(true),
            Ok(AdmitOutcome::Admitted) => match Box::pin(self.charge(std::mem::take(secret))).await
            {
                Ok(()) => return Ok(true),
                Err(refusal) => {
                    if let Err(e) = self.store.withdraw(digest, &entry).await {
                        // The entry stays until its expiry: the cap is stricter meanwhile.
                        debug!(error = %e, "could not withdraw the index entry of a refused issue");
                    }
                    refusal
                }
            },
            Ok(AdmitOutcome::Capped) => super::subjects::outstanding_refusal(cap),
            Ok(AdmitOutcome::RateLimited { name, retry_after }) => {
                Refusal::rate_limited(name, retry_after)
            }
            Err(e) => e.into(),
        };
        if let Err(e) = self.store.discard(admission.record(), digest).await {
            // Harmless: nobody holds its signature, and the record expires.
            debug!(error = %e, "could not delete the record of a refused issue");
        }
        Err(refusal)
    }

    /// The quotas of an issue for the subject with digest `subject` (`None`: without one),
    /// uncharged: (the per-subject ones, the per-SecretId ones). Called only when quotas are
    /// configured.
    fn quota_groups(
        &self,
        subject: Option<&str>,
        secret_id: &str,
    ) -> Result<(Vec<Charge>, Vec<Charge>), Refusal> {
        let quotas = &self.settings.quotas;
        if subject.is_none()
            && !self.settings.allow_missing_subject
            && quotas.iter().any(|q| q.scope == Scope::Subject)
        {
            return Err(Refusal::invalid(
                "subject is required: a per-subject quota is on",
            ));
        }
        Ok(quota::charges(quotas, subject, secret_id))
    }

    /// Charges one group of quotas in one atomic step; a request over one is refused with
    /// `RATE_LIMITED`.
    async fn charge(&self, group: Vec<Charge>) -> Result<(), Refusal> {
        if group.is_empty() {
            return Ok(());
        }
        match self.store.charge_quotas(&group).await? {
            QuotaOutcome::Refused { name, retry_after } => {
                Err(Refusal::rate_limited(name, retry_after))
            }
            QuotaOutcome::Allowed => Ok(()),
        }
    }
}
