//! The keys: an HMAC-SHA1 SecretKey, and what a SecretId may be.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use zeroize::Zeroizing;

use super::TAG_LEN;

/// Longest SecretId (SPEC section 5).
pub const MAX_SECRET_ID_LEN: usize = 128;

/// An HMAC-SHA1 SecretKey: kept out of `Debug`, zeroed on drop.
#[derive(Clone)]
pub struct SecretKey {
    // The keyed HMAC state is computed once and cloned per use (saves two SHA-1 blocks).
    mac: Hmac<Sha1>,
    _bytes: Zeroizing<Vec<u8>>,
}

impl SecretKey {
    /// A key from the SecretKey's UTF-8 bytes.
    pub fn new(bytes: &[u8]) -> SecretKey {
        let mac =
            <Hmac<Sha1> as KeyInit>::new_from_slice(bytes).expect("HMAC takes keys of any length");
        SecretKey {
            mac,
            _bytes: Zeroizing::new(bytes.to_vec()),
        }
    }

    pub(super) fn tag(&self, message: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is this key's HMAC of `message`, compared in constant time.
    pub fn verify_tag(&self, message: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Whether `id` is a valid SecretId: 1 to 128 of `A-Z a-z 0-9 _ -` (safe in a Redis key).
pub fn is_valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SECRET_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
