//! The refusal reasons of SPEC section 3, as one enum shared by every layer.
//!
//! Each layer reports its failures as its own error type; each of those maps onto a
//! [`Reason`], whose token starts every refused call's message. Only the service layer knows
//! which gRPC code a reason travels with.

use std::fmt;

/// A refusal reason; its [`Reason::as_str`] token is part of the public contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

impl Reason {
    /// Every reason, in SPEC order.
    pub const ALL: [Reason; 15] = [
        Reason::InvalidRequest,
        Reason::SignatureMalformed,
        Reason::UnknownSecretId,
        Reason::SignatureMismatch,
        Reason::SignatureExpired,
        Reason::SignatureNotYetValid,
        Reason::SignatureAlreadyUsed,
        Reason::SignatureRevoked,
        Reason::SignatureNotIssued,
        Reason::FileTooLarge,
        Reason::RateLimited,
        Reason::PermissionDenied,
        Reason::CallerUnauthenticated,
        Reason::NoActiveKey,
        Reason::StoreUnavailable,
    ];

    /// The reason token, e.g. `SIGNATURE_ALREADY_USED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::SignatureMalformed => "SIGNATURE_MALFORMED",
            Reason::UnknownSecretId => "UNKNOWN_SECRET_ID",
            Reason::SignatureMismatch => "SIGNATURE_MISMATCH",
            Reason::SignatureExpired => "SIGNATURE_EXPIRED",
            Reason::SignatureNotYetValid => "SIGNATURE_NOT_YET_VALID",
            Reason::SignatureAlreadyUsed => "SIGNATURE_ALREADY_USED",
            Reason::SignatureRevoked => "SIGNATURE_REVOKED",
            Reason::SignatureNotIssued => "SIGNATURE_NOT_ISSUED",
            Reason::FileTooLarge => "FILE_TOO_LARGE",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::PermissionDenied => "PERMISSION_DENIED",
            Reason::CallerUnauthenticated => "CALLER_UNAUTHENTICATED",
            Reason::NoActiveKey => "NO_ACTIVE_KEY",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
        }
    }

    /// The reason whose token is `token`, if any.
    pub fn from_token(token: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == token)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
