//! RevokeSignature: an operator or app server makes one unused signature unusable. A file of
//! its own, though short, because it is not the gateway's step: it shares no code with
//! consume beyond what `mod.rs` holds for every call about a signature. (A subject's
//! signatures all at once: RevokeSubject, in `subjects.rs`.)

use super::{SignatureState, UseCases, about, fingerprint_of, record_of};
use crate::audit::EventKind;
use crate::refusal::Refusal;
use crate::signature::{self, SignatureError};
use crate::store::Store;

impl<S: Store> UseCases<S> {
    /// RevokeSignature: makes an unused signature unusable; reports the state before. An
    /// expired one is `EXPIRED` without touching the store (it can never pass again).
    pub async fn revoke(&self, signature: &str) -> Result<SignatureState, Refusal> {
        let parsed = self.authenticate(signature)?;
        let now = self.clock.now();
        let previous = match signature::check_time(&parsed.claims, now, self.leeway()) {
            Err(SignatureError::Expired { .. }) => SignatureState::Expired,
            _ => about(
                &parsed,
                self.store
                    .revoke(record_of(&parsed, &fingerprint_of(&parsed)), now)
                    .await
                    .map_err(Refusal::from),
            )?
            .into(),
        };
        if previous == SignatureState::Issued {
            self.publish(EventKind::Revoked, Some(&parsed.claims), "", "");
        }
        Ok(previous)
    }
}
