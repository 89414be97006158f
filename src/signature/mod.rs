//! The Tencent Cloud VOD client-upload signature: sign, parse, verify (SPEC section 2).
//!
//! ```text
//! original  = "secretId=" ID "&currentTimeStamp=" T "&expireTime=" E "&random=" R ["&" name "=" value]*
//! signature = Base64( HMAC-SHA1(SecretKey, original) ++ original )
//! ```
//!
//! This module knows nothing of gRPC or of the store: it turns a policy into a signature and a
//! signature back into [`Claims`], and says precisely why when it cannot.
//!
//! - [`policy`]: Tencent's optional parameters and their rules;
//! - [`key`]: the SecretKey and what a SecretId may be;
//! - [`sign`]: the original, its tag, the signature;
//! - [`parse`]: a signature back into claims, the tag check and the time window.

mod key;
mod parse;
mod policy;
mod query;
mod sign;

pub use self::key::{MAX_SECRET_ID_LEN, SecretKey, is_valid_secret_id};
pub use self::parse::{MAX_SIGNATURE_LEN, Parsed, check_time, parse, parse_original};
pub use self::policy::{
    MAX_PROCEDURE, MAX_SESSION_CONTEXT, MAX_SOURCE_CONTEXT, MAX_STORAGE_REGION, PolicyError,
    UploadPolicy,
};
pub use self::sign::{SignRequest, Signed, fingerprint, original, sign};
pub use query::{decode_component, encode_component};

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::engine::{Simd, general_purpose};
use serde::Serialize;

use crate::reason::Reason;

/// Standard Base64 with canonical padding, as `general_purpose::STANDARD`: the same alphabet and
/// the same strict decoding, but AVX2/NEON (detected once) where the CPU has them, several times
/// faster on a signature's few hundred characters.
static BASE64: LazyLock<Simd> = LazyLock::new(|| Simd::standard(general_purpose::PAD));

/// Length of the HMAC-SHA1 tag that prefixes the original.
pub const TAG_LEN: usize = 20;
/// Longest validity window a signature may have: 90 days.
pub const MAX_VALIDITY_SECONDS: i64 = 7_776_000;

/// Everything a signature says, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// `secretId`: which key signed it.
    pub secret_id: String,
    /// `currentTimeStamp`: issue time, Unix seconds.
    pub current_time_stamp: i64,
    /// `expireTime`: Unix seconds.
    pub expire_time: i64,
    /// `random`: the nonce; with the SecretId it names the store record.
    pub random: u32,
    /// `oneTimeValid=1`.
    pub one_time_valid: bool,
    /// The optional parameters vod-signer knows.
    pub policy: UploadPolicy,
    /// Parameters vod-signer does not know, decoded; the HMAC covers them.
    pub extra: BTreeMap<String, String>,
    /// The signed plain text, exactly as signed.
    pub original: String,
}

/// Why a signature was refused by the codec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Parsing failed; the text says where, never quoting the signature whole.
    #[error("{0}")]
    Malformed(String),
    /// No key with that SecretId.
    #[error("no key with secretId {0:?}")]
    UnknownSecretId(String),
    /// The HMAC does not match.
    #[error("the signature's HMAC does not match its content")]
    Mismatch,
    /// Now is past expireTime plus the leeway.
    #[error("signature expired at {expire_time} (now {now})")]
    Expired {
        /// The signature's expireTime.
        expire_time: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// currentTimeStamp is past now plus the leeway.
    #[error("signature is valid from {current_time_stamp} (now {now})")]
    NotYetValid {
        /// The signature's currentTimeStamp.
        current_time_stamp: i64,
        /// The verifier's clock.
        now: i64,
    },
}

impl SignatureError {
    /// The SPEC section 3 reason this error is refused with.
    pub fn reason(&self) -> Reason {
        match self {
            SignatureError::Malformed(_) => Reason::SignatureMalformed,
            SignatureError::UnknownSecretId(_) => Reason::UnknownSecretId,
            SignatureError::Mismatch => Reason::SignatureMismatch,
            SignatureError::Expired { .. } => Reason::SignatureExpired,
            SignatureError::NotYetValid { .. } => Reason::SignatureNotYetValid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
    const SPEC_ORIGINAL: &str = "secretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE&currentTimeStamp=1700000000&expireTime=1700003600&random=3141592653&oneTimeValid=1&procedure=QCVB_SimpleProcessFile&sourceContext=user-42%2F%E4%B8%8A%E4%BC%A0%20%231";
    const SPEC_SIGNATURE: &str = "kfBPqxhVp5sB0fXpreEftY/kUKlzZWNyZXRJZD1BS0lEejhrcmJzSjV5S0JaUXBuNzRXRmttTFB4M0VYQU1QTEUmY3VycmVudFRpbWVTdGFtcD0xNzAwMDAwMDAwJmV4cGlyZVRpbWU9MTcwMDAwMzYwMCZyYW5kb209MzE0MTU5MjY1MyZvbmVUaW1lVmFsaWQ9MSZwcm9jZWR1cmU9UUNWQl9TaW1wbGVQcm9jZXNzRmlsZSZzb3VyY2VDb250ZXh0PXVzZXItNDIlMkYlRTQlQjglOEElRTQlQkMlQTAlMjAlMjMx";

    fn spec_policy() -> UploadPolicy {
        UploadPolicy {
            procedure: Some("QCVB_SimpleProcessFile".into()),
            source_context: Some("user-42/上传 #1".into()),
            ..UploadPolicy::default()
        }
    }

    #[test]
    fn spec_example_signs_byte_for_byte() {
        let policy = spec_policy();
        let signed = sign(
            &SecretKey::new(KEY.as_bytes()),
            &SignRequest {
                secret_id: "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
                current_time_stamp: 1_700_000_000,
                expire_time: 1_700_003_600,
                random: 3_141_592_653,
                one_time_valid: true,
                policy: &policy,
            },
        );
        assert_eq!(signed.claims.original, SPEC_ORIGINAL);
        assert_eq!(signed.signature, SPEC_SIGNATURE);
    }

    #[test]
    fn spec_example_parses_and_verifies() {
        let parsed = parse(SPEC_SIGNATURE).unwrap();
        assert_eq!(parsed.claims.policy, spec_policy());
        assert_eq!(parsed.claims.random, 3_141_592_653);
        assert!(parsed.claims.one_time_valid);
        parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
        assert_eq!(
            parsed.verify(&SecretKey::new(b"other")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn time_window_with_leeway() {
        let claims = parse(SPEC_SIGNATURE).unwrap().claims;
        assert!(check_time(&claims, 1_700_000_000, 0).is_ok());
        assert!(check_time(&claims, 1_700_003_660, 60).is_ok());
        assert!(matches!(
            check_time(&claims, 1_700_003_661, 60),
            Err(SignatureError::Expired { .. })
        ));
        assert!(check_time(&claims, 1_699_999_940, 60).is_ok());
        assert!(matches!(
            check_time(&claims, 1_699_999_939, 60),
            Err(SignatureError::NotYetValid { .. })
        ));
    }

    #[test]
    fn fingerprint_is_short_and_distinct() {
        let a = fingerprint(&[1; TAG_LEN]);
        assert_eq!(a.len(), 24);
        assert_ne!(a, fingerprint(&[2; TAG_LEN]));
    }

    #[test]
    fn debug_hides_key() {
        assert_eq!(
            format!("{:?}", SecretKey::new(KEY.as_bytes())),
            "SecretKey(<redacted>)"
        );
    }
}
