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
}

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
            retry_after: None,
            metadata: Vec::new(),
        }
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
        | Reason::NoActiveKey => Code::FailedPrecondition,
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
        Status::with_error_details(
            grpc_code(r.reason),
            format!("{}: {}", r.reason, r.message),
            details,
        )
    }
}
