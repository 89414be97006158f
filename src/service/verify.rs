//! VerifySignature: what the upload gateway asks before an upload starts; reports a
//! signature's state and changes nothing.

use super::{SignatureState, UseCases, Verified, about, fingerprint_of, record_of};
use crate::refusal::Refusal;
use crate::signature::{self, SignatureError};
use crate::store::Store;

impl<S: Store> UseCases<S> {
    /// VerifySignature: checks the signature and reports its state; changes nothing. An
    /// expired one is `EXPIRED` without asking the store.
    pub async fn verify(&self, signature: &str) -> Result<Verified, Refusal> {
        let parsed = self.authenticate(signature)?;
        let state = about(
            &parsed,
            async {
                Ok(
                    match signature::check_time(&parsed.claims, self.clock.now(), self.leeway()) {
                        Err(SignatureError::Expired { .. }) => SignatureState::Expired,
                        Err(e) => return Err(e.into()),
                        Ok(()) => self
                            .store
                            .status(record_of(&parsed, &fingerprint_of(&parsed)))
                            .await?
                            .into(),
                    },
                )
            }
            .await,
        )?;
        Ok(Verified {
            state,
            claims: parsed.claims,
        })
    }
}
