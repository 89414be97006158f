//! Lower-case hex, and SHA-256 digests in hex: the short fingerprints that records, quota
//! keys and the caller policy use. One encoder, so none of them formats byte by byte.

use sha2::{Digest, Sha256};

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Bytes, not `char`s: pushing a `char` re-encodes it as UTF-8 each time.
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The first `len` bytes (at most 32) of SHA-256 of `data`, as hex.
pub fn sha256_hex(data: &[u8], len: usize) -> String {
    let digest = Sha256::digest(data);
    hex(&digest[..len.min(digest.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_digests() {
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
        assert_eq!(
            sha256_hex(b"test", 32),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(sha256_hex(b"test", 4), "9f86d081");
    }
}
