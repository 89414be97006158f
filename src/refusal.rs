//! A refused call: its [`Reason`] and a sentence for a person, and how it travels as a gRPC
//! status (SPEC section 3).
//!
//! The status's message starts with the reason token, then `: ` and the sentence; it carries a
//! `google.rpc.ErrorInfo` with the same reason and domain `vodsigner` (and a
//! `google.rpc.RetryInfo` when a retry could succeed later). Messages never quote a key or a
//! whole signature. Every layer that refuses (the protobuf codec, the per-call layers, the use
//! cases) builds a [`Refusal`]; only this module knows the gRPC codes.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::reason::Reason;

/// Domain of every `google.rpc.ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "vodsigner";

/// A refused call: the reason and a sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The SPEC section 3 reason.
    pub reason: Reason,
    /// What went wrong, for a person; never a key or a whole signature.
    pub message: String,
    /// When a retry could succeed (quotas); sent as `google.rpc.RetryInfo` and in the
    /// ErrorInfo metadata (`retry_after_ms`).
    pub retry_after: Option<Duration>,
    /// Extra ErrorInfo metadata.
    pub metadata: Vec<(&'static str, String)>,
    /// The SecretId and nonce the refused call's signature claimed, for the call's log line
    /// (see [`ABOUT_HEADER`]); `None` before a signature was parsed.
    pub about: Option<(String, u32)>,
}

/// The response metadata that carries a refusal's [`Refusal::about`] from the use cases to the
/// per-call layer, which logs it and removes it: it never reaches the caller.
pub const ABOUT_HEADER: &str = "vodsigner-refused-signature";

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
            retry_after: None,
            metadata: Vec::new(),
            about: None,
        }
    }

    /// The refusal of a call about the signature with this SecretId and nonce.
    pub fn about(mut self, secret_id: &str, random: u32) -> Refusal {
        self.about = Some((secret_id.to_owned(), random));
        self
    }

    /// `INVALID_REQUEST`: a request field is out of range.
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Reason::InvalidRequest, message)
    }

    /// A quota refusal: `RATE_LIMITED`, with when to retry.
    pub fn rate_limited(quota: &str, retry_after: Duration) -> Refusal {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        Refusal {
            retry_after: Some(retry_after),
            metadata: vec![("quota", quota.to_owned())],
            ..Refusal::new(
                Reason::RateLimited,
                format!("the {quota} quota is used up; retry in {seconds} s"),
            )
        }
    }

    /// Adds ErrorInfo metadata.
    pub fn with_metadata(mut self, key: &'static str, value: impl Into<String>) -> Refusal {
        self.metadata.push((key, value.into()));
        self
    }
}

/// The gRPC code each reason travels with.
pub fn grpc_code(reason: Reason) -> Code {
    match reason {
        Reason::InvalidRequest | Reason::SignatureMalformed => Code::InvalidArgument,
        Reason::UnknownSecretId | Reason::SignatureMismatch | Reason::CallerUnauthenticated => {
            Code::Unauthenticated
        }
        Reason::SignatureExpired
        | Reason::SignatureNotYetValid
        | Reason::SignatureAlreadyUsed
        | Reason::SignatureRevoked
        | Reason::SignatureNotIssued
        | Reason::FileTooLarge
        | Reason::NoActiveKey
        | Reason::SignatureNotConsumed
        | Reason::UploadAlreadyCompleted => Code::FailedPrecondition,
        Reason::RateLimited | Reason::StoreFull => Code::ResourceExhausted,
        Reason::PermissionDenied => Code::PermissionDenied,
        Reason::StoreUnavailable => Code::Unavailable,
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        let mut metadata: HashMap<String, String> = r
            .metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        if let Some(after) = r.retry_after {
            metadata.insert("retry_after_ms".into(), after.as_millis().to_string());
        }
        let mut details = ErrorDetails::with_error_info(r.reason.as_str(), ERROR_DOMAIN, metadata);
        if let Some(after) = r.retry_after {
            details.set_retry_info(Some(after));
        }
        let mut status = Status::with_error_details(
            grpc_code(r.reason),
            format!("{}: {}", r.reason, r.message),
            details,
        );
        // A SecretId is `A-Z a-z 0-9 _ -` only: always a valid metadata value.
        if let Some((secret_id, random)) = r.about
            && let Ok(value) = format!("{secret_id}:{random}").parse()
        {
            status.metadata_mut().insert(ABOUT_HEADER, value);
        }
        status
    }
}
