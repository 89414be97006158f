//! The refusal reasons of SPEC section 3, as one enum shared by every layer.
//!
//! Each layer reports its failures as its own error type; each of those maps onto a
//! [`Reason`], whose token starts every refused call's message. Only `refusal.rs` knows
//! which gRPC code a reason travels with.

/// A refusal reason; its token ([`Reason::as_str`], e.g. `SIGNATURE_ALREADY_USED`) is part
/// of the public contract.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
    strum::Display,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// A request field is out of range.
    InvalidRequest,
    /// The signature could not be parsed.
    SignatureMalformed,
    /// No key has the signature's SecretId.
    UnknownSecretId,
    /// The HMAC does not match.
    SignatureMismatch,
    /// Now is past expireTime plus the leeway.
    SignatureExpired,
    /// currentTimeStamp is past now plus the leeway.
    SignatureNotYetValid,
    /// The signature was consumed before.
    SignatureAlreadyUsed,
    /// The signature was revoked.
    SignatureRevoked,
    /// Authentic, but the store has no record of its issue.
    SignatureNotIssued,
    /// The upload is larger than the signature's maxFileSize.
    FileTooLarge,
    /// A quota or the concurrency limit refused the call.
    RateLimited,
    /// The caller may not call this RPC.
    PermissionDenied,
    /// No credential, or one that names no known caller (extension: the SPEC is silent).
    CallerUnauthenticated,
    /// IssueSignature for the active key while it is not loaded (removed from the keys
    /// directory); verify, consume and revoke go on with the keys that remain.
    NoActiveKey,
    /// The store did not answer in time; nothing was accepted.
    StoreUnavailable,
    /// IssueSignature while Redis is within its memory reserve of `maxmemory`; consume,
    /// revoke and complete go on.
    StoreFull,
}

impl Reason {
    /// The reason token, e.g. `SIGNATURE_ALREADY_USED`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The reason whose token is `token`, if any.
    pub fn from_token(token: &str) -> Option<Reason> {
        token.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator as _;

    use super::*;

    #[test]
    fn tokens_are_the_contract() {
        let tokens: Vec<&str> = Reason::iter().map(Reason::as_str).collect();
        assert_eq!(
            tokens,
            [
                "INVALID_REQUEST",
                "SIGNATURE_MALFORMED",
                "UNKNOWN_SECRET_ID",
                "SIGNATURE_MISMATCH",
                "SIGNATURE_EXPIRED",
                "SIGNATURE_NOT_YET_VALID",
                "SIGNATURE_ALREADY_USED",
                "SIGNATURE_REVOKED",
                "SIGNATURE_NOT_ISSUED",
                "FILE_TOO_LARGE",
                "RATE_LIMITED",
                "PERMISSION_DENIED",
                "CALLER_UNAUTHENTICATED",
                "NO_ACTIVE_KEY",
                "STORE_UNAVAILABLE",
                "STORE_FULL",
            ]
        );
        for reason in Reason::iter() {
            assert_eq!(Reason::from_token(reason.as_str()), Some(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        assert_eq!(Reason::from_token("signature_already_used"), None);
    }
}
