//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), as Svix and others
//! send them, so a receiver can check a push with any of their libraries:
//!
//! - `webhook-id`: the notification's id, the same on every retry;
//! - `webhook-timestamp`: Unix seconds of this attempt;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`, one per
//!   secret, space-separated (two during a rotation).
//!
//! A secret is written `whsec_<base64>` (the prefix is optional), the way these libraries take
//! it: the HMAC key is the decoded bytes.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The secrets that sign pushes; every one signs each push.
pub struct Secrets {
    keys: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} secrets, redacted)", self.keys.len())
    }
}

/// Why a secrets file was refused. Never quotes a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path of the file, as given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a Standard Webhooks secret.
    #[error(
        "line {line} of the notification secrets is not a Standard Webhooks secret \
         (`whsec_` and base64 of at least 24 bytes, e.g. from `openssl rand -base64 32`)"
    )]
    Malformed {
        /// 1-based.
        line: usize,
    },
    /// No secret at all.
    #[error("the notification secrets file holds no secret")]
    Empty,
}

/// Shortest key accepted: Standard Webhooks asks for 24 to 64 bytes.
const MIN_KEY_BYTES: usize = 24;

/// How far a push's `webhook-timestamp` may be from the receiver's clock, as Standard
/// Webhooks, Svix and Stripe allow: older pushes are refused as replays.
pub const TOLERANCE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Why a receiver refused a push ([`Secrets::verify_push`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushRefused {
    /// `webhook-timestamp` is not Unix seconds.
    #[error("webhook-timestamp {0:?} is not Unix seconds")]
    BadTimestamp(String),
    /// `webhook-timestamp` is further from now than the tolerance (a replay, or a clock off).
    #[error("webhook-timestamp is {skew} s from now, more than the {tolerance} s allowed")]
    OutOfTolerance {
        /// Timestamp minus now, seconds.
        skew: i64,
        /// The tolerance, seconds.
        tolerance: u64,
    },
    /// No `v1` signature of the header is one of these secrets' over `id.timestamp.body`.
    #[error("no webhook-signature matches the body with the receiver's secrets")]
    NoMatch,
}

impl Secrets {
    /// One secret a line; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Secrets, SecretsError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let encoded = line.strip_prefix("whsec_").unwrap_or(line);
            let key = STANDARD
                .decode(encoded)
                .ok()
                .filter(|k| k.len() >= MIN_KEY_BYTES)
                .ok_or(SecretsError::Malformed { line: i + 1 })?;
            keys.push(Zeroizing::new(key));
        }
        if keys.is_empty() {
            return Err(SecretsError::Empty);
        }
        Ok(Secrets { keys })
    }

    /// Reads `--notify-secret-file`.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Secrets::parse(&Zeroizing::new(text))
    }

    /// The `webhook-signature` header value of `body` sent as `id` at `timestamp`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.keys
            .iter()
            .map(|key| format!("v1,{}", STANDARD.encode(tag(key, id, timestamp, body))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Checks a `webhook-signature` header in constant time per signature: `Ok` when any of
    /// its `v1` signatures is one of these secrets' over `id.timestamp.body`. (The receiver's
    /// side; the tests and the upload-flow example's app server use it.)
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected: Vec<[u8; 32]> = self
            .keys
            .iter()
            .map(|key| tag(key, id, timestamp, body))
            .collect();
        header.split(' ').any(|signature| {
            let Some(sent) = signature
                .strip_prefix("v1,")
                .and_then(|b64| STANDARD.decode(b64).ok())
            else {
                return false;
            };
            expected
                .iter()
                .any(|e| subtle::ConstantTimeEq::ct_eq(&e[..], &sent[..]).into())
        })
    }
}

impl Secrets {
    /// A receiver's whole check of a push, given its three `webhook-*` headers and the raw
    /// body: the timestamp within `tolerance` of `now` (Unix seconds), then the signature.
    pub fn verify_push(
        &self,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now: i64,
        tolerance: std::time::Duration,
    ) -> Result<(), PushRefused> {
        let at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| PushRefused::BadTimestamp(timestamp.chars().take(32).collect()))?;
        let skew = at.saturating_sub(now);
        if skew.unsigned_abs() > tolerance.as_secs() {
            return Err(PushRefused::OutOfTolerance {
                skew,
                tolerance: tolerance.as_secs(),
            });
        }
        if self.verify(id, at, body, signature) {
            Ok(())
        } else {
            Err(PushRefused::NoMatch)
        }
    }
}

fn tag(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector the Standard Webhooks specification and Svix's libraries publish.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_published_test_vector() {
        let secrets = Secrets::parse(SECRET).unwrap();
        assert_eq!(secrets.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        // The prefix is optional, as in the reference libraries.
        let bare = Secrets::parse(SECRET.trim_start_matches("whsec_")).unwrap();
        assert_eq!(bare.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        assert!(secrets.verify(ID, TIMESTAMP, BODY, SIGNATURE));
        assert!(!secrets.verify(ID, TIMESTAMP + 1, BODY, SIGNATURE));
        assert!(!secrets.verify(ID, TIMESTAMP, b"{}", SIGNATURE));
    }

    #[test]
    fn every_secret_signs_during_a_rotation() {
        let other = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let both = Secrets::parse(&format!("# rotation\n{SECRET}\n\n{other}\n")).unwrap();
        let header = both.sign(ID, TIMESTAMP, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SIGNATURE);
        // A receiver that knows only the new secret accepts it.
        assert!(
            Secrets::parse(&other)
                .unwrap()
                .verify(ID, TIMESTAMP, BODY, &header)
        );
    }

    #[test]
    fn a_receiver_checks_the_timestamp_then_the_signature() {
        let secrets = Secrets::parse(SECRET).unwrap();
        let ts = TIMESTAMP.to_string();
        let check = |ts: &str, body: &[u8], now: i64| {
            secrets.verify_push(ID, ts, SIGNATURE, body, now, TOLERANCE)
        };
        assert_eq!(check(&ts, BODY, TIMESTAMP + 299), Ok(()));
        assert_eq!(check(&ts, BODY, TIMESTAMP - 300), Ok(()));
        assert_eq!(
            check(&ts, BODY, TIMESTAMP + 301),
            Err(PushRefused::OutOfTolerance {
                skew: -301,
                tolerance: 300
            })
        );
        assert!(matches!(
            check(&ts, BODY, TIMESTAMP - 301),
            Err(PushRefused::OutOfTolerance { skew: 301, .. })
        ));
        assert_eq!(check(&ts, b"{}", TIMESTAMP), Err(PushRefused::NoMatch));
        let later = (TIMESTAMP + 1).to_string();
        assert_eq!(check(&later, BODY, TIMESTAMP), Err(PushRefused::NoMatch));
        assert!(matches!(
            check("soon", BODY, TIMESTAMP),
            Err(PushRefused::BadTimestamp(_))
        ));
    }

    #[test]
    fn malformed_secrets_are_refused_by_line() {
        assert!(matches!(
            Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nnot base64!"),
            Err(SecretsError::Malformed { line: 2 })
        ));
        // Too short a key.
        assert!(matches!(
            Secrets::parse("whsec_c2hvcnQ="),
            Err(SecretsError::Malformed { line: 1 })
        ));
        assert!(matches!(
            Secrets::parse("\n# only a comment\n"),
            Err(SecretsError::Empty)
        ));
    }
}
