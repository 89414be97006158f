//! URL encoding of parameter values: `encodeURIComponent` on the way out, any valid
//! percent-encoding (and `+` as space) on the way in.
//!
//! Encoding is the `percent-encoding` crate with `encodeURIComponent`'s set. Decoding stays
//! our own: the crate's decoder passes a malformed escape (`%zz`, a lone `%`) through as
//! literal text, while a signature with one must be refused as malformed, and `+` must mean
//! a space as Tencent's parser reads it.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What `encodeURIComponent` escapes: everything but `A-Z a-z 0-9 - _ . ~ ! * ' ( )`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Appends `value` to `out` encoded exactly like JavaScript's `encodeURIComponent`.
pub fn encode_component_into(out: &mut String, value: &str) {
    out.extend(utf8_percent_encode(value, COMPONENT));
}

/// Encodes `value` like `encodeURIComponent`.
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    encode_component_into(&mut out, value);
    out
}

/// Why a component could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Decodes one query component: `%XX` escapes and `+` as space; the result must be UTF-8.
pub fn decode_component(raw: &str) -> Result<std::borrow::Cow<'_, str>, DecodeError> {
    decode_if(raw, raw.bytes().any(|b| b == b'%' || b == b'+'))
}

/// [`decode_component`] for a caller that already knows whether `raw` has a `%` or `+`
/// (`escaped`); without one, `raw` is its own decoding.
pub(crate) fn decode_if(
    raw: &str,
    escaped: bool,
) -> Result<std::borrow::Cow<'_, str>, DecodeError> {
    if !escaped {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(DecodeError::BadEscape),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| DecodeError::NotUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_encode_uri_component() {
        assert_eq!(
            encode_component("user-42/上传 #1"),
            "user-42%2F%E4%B8%8A%E4%BC%A0%20%231"
        );
        assert_eq!(encode_component("A-Z_a.z~0!9*'()"), "A-Z_a.z~0!9*'()");
        assert_eq!(encode_component("a+b=c&d"), "a%2Bb%3Dc%26d");
    }

    #[test]
    fn decodes_any_valid_encoding() {
        assert_eq!(decode_component("a%20b+c").unwrap(), "a b c");
        assert_eq!(decode_component("%e4%b8%8a").unwrap(), "上");
        assert_eq!(decode_component("plain").unwrap(), "plain");
    }

    #[test]
    fn refuses_bad_escapes_and_non_utf8() {
        assert_eq!(decode_component("%"), Err(DecodeError::BadEscape));
        assert_eq!(decode_component("%4"), Err(DecodeError::BadEscape));
        assert_eq!(decode_component("%zz"), Err(DecodeError::BadEscape));
        assert_eq!(decode_component("%FF"), Err(DecodeError::NotUtf8));
    }
}
