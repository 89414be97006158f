//! The Tencent Cloud VOD client-upload signature: sign, parse, verify (SPEC section 2).
//!
//! ```text
//! original  = "secretId=" ID "&currentTimeStamp=" T "&expireTime=" E "&random=" R ["&" name "=" value]*
//! signature = Base64( HMAC-SHA1(SecretKey, original) ++ original )
//! ```
//!
//! This module knows nothing of gRPC or of the store: it turns a policy into a signature and a
//! signature back into [`Claims`], and says precisely why when it cannot.

mod query;

pub use query::{decode_component, encode_component};

use base64::Engine as _;
use base64::engine::{Simd, general_purpose};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha1::Sha1;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use zeroize::Zeroizing;

use crate::reason::Reason;

/// Standard Base64 with canonical padding, as `general_purpose::STANDARD`: the same alphabet and
/// the same strict decoding, but AVX2/NEON (detected once) where the CPU has them, several times
/// faster on a signature's few hundred characters.
static BASE64: LazyLock<Simd> = LazyLock::new(|| Simd::standard(general_purpose::PAD));

/// Length of the HMAC-SHA1 tag that prefixes the original.
pub const TAG_LEN: usize = 20;
/// Longest validity window a signature may have: 90 days.
pub const MAX_VALIDITY_SECONDS: i64 = 7_776_000;
/// Longest `sourceContext`, in bytes.
pub const MAX_SOURCE_CONTEXT: usize = 250;
/// Longest `sessionContext`, in bytes.
pub const MAX_SESSION_CONTEXT: usize = 1000;
/// Longest `procedure` name, in bytes (a cap of vod-signer's, so every valid policy signs
/// into a signature the parser accepts).
pub const MAX_PROCEDURE: usize = 1000;
/// Longest `storageRegion`, in bytes.
pub const MAX_STORAGE_REGION: usize = 64;
/// Longest signature the parser looks at; a real one is a few hundred bytes, at most a few KiB.
pub const MAX_SIGNATURE_LEN: usize = 16 * 1024;
/// Longest SecretId (SPEC section 5).
pub const MAX_SECRET_ID_LEN: usize = 128;

/// What the platform does with the upload: Tencent's optional parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UploadPolicy {
    /// `classId`: category id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_id: Option<u64>,
    /// `procedure`: task-flow template run after upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procedure: Option<String>,
    /// `taskPriority`: -10..=10, only with `procedure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_priority: Option<i32>,
    /// `taskNotifyMode`: `Finish`, `Change` or `None`, only with `procedure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_notify_mode: Option<String>,
    /// `sourceContext`: at most 250 bytes, echoed in the upload-complete event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_context: Option<String>,
    /// `sessionContext`: at most 1000 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_context: Option<String>,
    /// `vodSubAppId`: sub-application id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vod_sub_app_id: Option<u64>,
    /// `storageRegion`, e.g. `ap-chongqing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_region: Option<String>,
    /// `maxFileSize` (vod-signer extension): largest upload in bytes, enforced at consume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
}

/// Why a policy breaks Tencent's rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `taskPriority` outside -10..=10.
    #[error("taskPriority {0} is outside -10..=10")]
    TaskPriorityRange(i32),
    /// `taskNotifyMode` not one of the three values.
    #[error("taskNotifyMode must be Finish, Change or None")]
    TaskNotifyMode,
    /// A parameter that needs `procedure` without it.
    #[error("{0} is only allowed together with procedure")]
    NeedsProcedure(&'static str),
    /// A context longer than allowed.
    #[error("{name} is {len} bytes, at most {max} allowed")]
    TooLong {
        /// Parameter name.
        name: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl UploadPolicy {
    /// Checks Tencent's rules for the optional parameters (SPEC section 2's table).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let has_procedure = self.procedure.is_some();
        if let Some(p) = self.task_priority {
            if !(-10..=10).contains(&p) {
                return Err(PolicyError::TaskPriorityRange(p));
            }
            if !has_procedure {
                return Err(PolicyError::NeedsProcedure("taskPriority"));
            }
        }
        if let Some(mode) = &self.task_notify_mode {
            if !matches!(mode.as_str(), "Finish" | "Change" | "None") {
                return Err(PolicyError::TaskNotifyMode);
            }
            if !has_procedure {
                return Err(PolicyError::NeedsProcedure("taskNotifyMode"));
            }
        }
        check_len("procedure", &self.procedure, MAX_PROCEDURE)?;
        check_len("storageRegion", &self.storage_region, MAX_STORAGE_REGION)?;
        check_len("sourceContext", &self.source_context, MAX_SOURCE_CONTEXT)?;
        check_len("sessionContext", &self.session_context, MAX_SESSION_CONTEXT)?;
        Ok(())
    }
}

fn check_len(name: &'static str, value: &Option<String>, max: usize) -> Result<(), PolicyError> {
    match value {
        Some(v) if v.len() > max => Err(PolicyError::TooLong {
            name,
            len: v.len(),
            max,
        }),
        _ => Ok(()),
    }
}

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

/// What [`sign`] needs besides the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignRequest<'a> {
    /// `secretId`.
    pub secret_id: &'a str,
    /// `currentTimeStamp`, Unix seconds.
    pub current_time_stamp: i64,
    /// `expireTime`, Unix seconds.
    pub expire_time: i64,
    /// `random`.
    pub random: u32,
    /// Whether to add `oneTimeValid=1` (vod-signer's issuer always does).
    pub one_time_valid: bool,
    /// The optional parameters.
    pub policy: &'a UploadPolicy,
}

/// A signature and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The Base64 signature to hand to the client.
    pub signature: String,
    /// Its claims, as [`parse`] would return them.
    pub claims: Claims,
    /// Its HMAC tag.
    pub tag: [u8; TAG_LEN],
}

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

    fn tag(&self, message: &[u8]) -> [u8; TAG_LEN] {
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

/// Builds the original of `req`, in vod-signer's fixed parameter order.
pub fn original(req: &SignRequest<'_>) -> String {
    let p = req.policy;
    let text_len = |v: &Option<String>| v.as_ref().map_or(0, |v| v.len());
    // Room for the fixed part and every parameter unescaped: one allocation in the usual case.
    let mut s = String::with_capacity(
        160 + req.secret_id.len()
            + text_len(&p.procedure)
            + text_len(&p.task_notify_mode)
            + text_len(&p.source_context)
            + text_len(&p.session_context)
            + text_len(&p.storage_region),
    );
    // itoa: no formatter machinery and no temporary String per number.
    let mut num = itoa::Buffer::new();
    s.push_str("secretId=");
    query::encode_component_into(&mut s, req.secret_id);
    s.push_str("&currentTimeStamp=");
    s.push_str(num.format(req.current_time_stamp));
    s.push_str("&expireTime=");
    s.push_str(num.format(req.expire_time));
    s.push_str("&random=");
    s.push_str(num.format(req.random));
    if req.one_time_valid {
        s.push_str("&oneTimeValid=1");
    }
    let param = |s: &mut String, name: &str, raw: &str, encode: bool| {
        s.push('&');
        s.push_str(name);
        s.push('=');
        if encode {
            query::encode_component_into(s, raw);
        } else {
            s.push_str(raw);
        }
    };
    if let Some(v) = p.class_id {
        param(&mut s, "classId", num.format(v), false);
    }
    if let Some(v) = &p.procedure {
        param(&mut s, "procedure", v, true);
    }
    if let Some(v) = p.task_priority {
        param(&mut s, "taskPriority", num.format(v), false);
    }
    if let Some(v) = &p.task_notify_mode {
        param(&mut s, "taskNotifyMode", v, true);
    }
    if let Some(v) = &p.source_context {
        param(&mut s, "sourceContext", v, true);
    }
    if let Some(v) = &p.session_context {
        param(&mut s, "sessionContext", v, true);
    }
    if let Some(v) = p.vod_sub_app_id {
        param(&mut s, "vodSubAppId", num.format(v), false);
    }
    if let Some(v) = &p.storage_region {
        param(&mut s, "storageRegion", v, true);
    }
    if let Some(v) = p.max_file_size {
        param(&mut s, "maxFileSize", num.format(v), false);
    }
    s
}

/// Signs `req` with `key`: the signature and its claims.
///
/// The caller validates the request first ([`UploadPolicy::validate`], the time window);
/// this function signs whatever it is given, so tests can make any signature they need.
pub fn sign(key: &SecretKey, req: &SignRequest<'_>) -> Signed {
    let original = original(req);
    let tag = key.tag(original.as_bytes());
    let signature = encode_signature(&tag, original.as_bytes());
    let claims = Claims {
        secret_id: req.secret_id.to_owned(),
        current_time_stamp: req.current_time_stamp,
        expire_time: req.expire_time,
        random: req.random,
        one_time_valid: req.one_time_valid,
        policy: req.policy.clone(),
        extra: BTreeMap::new(),
        original,
    };
    Signed {
        signature,
        claims,
        tag,
    }
}

/// Base64(`tag` ++ `original`) written straight into the result, without first copying the two
/// into one buffer: the tag and the original's first byte are 21 bytes, whole 3-byte groups, so
/// their encoding and the rest's concatenate into the encoding of the whole.
fn encode_signature(tag: &[u8; TAG_LEN], original: &[u8]) -> String {
    let total = base64::encoded_len(TAG_LEN + original.len(), true).expect("a short original");
    let mut out = vec![0u8; total];
    let mut head = [0u8; TAG_LEN + 1];
    head[..TAG_LEN].copy_from_slice(tag);
    let rest = match original.split_first() {
        Some((&first, rest)) => {
            head[TAG_LEN] = first;
            rest
        }
        None => &[],
    };
    let head = &head[..(TAG_LEN + original.len()).min(TAG_LEN + 1)];
    let n = BASE64
        .encode_slice(head, &mut out)
        .expect("sized by encoded_len");
    let m = BASE64
        .encode_slice(rest, &mut out[n..])
        .expect("sized by encoded_len");
    debug_assert_eq!(n + m, total);
    String::from_utf8(out).expect("Base64 is ASCII")
}

/// A parsed signature: its tag and claims, not yet authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The HMAC tag the signature carries.
    pub tag: [u8; TAG_LEN],
    /// What the original says.
    pub claims: Claims,
}

impl Parsed {
    /// Checks the tag against `key`, in constant time.
    pub fn verify(&self, key: &SecretKey) -> Result<(), SignatureError> {
        if key.verify_tag(self.claims.original.as_bytes(), &self.tag) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
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

fn malformed(msg: impl Into<String>) -> SignatureError {
    SignatureError::Malformed(msg.into())
}

/// Whether `id` is a valid SecretId: 1 to 128 of `A-Z a-z 0-9 _ -` (safe in a Redis key).
pub fn is_valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SECRET_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses a signature strictly (SPEC section 2); it needs no key and authenticates nothing.
pub fn parse(signature: &str) -> Result<Parsed, SignatureError> {
    if signature.len() > MAX_SIGNATURE_LEN {
        return Err(malformed(format!(
            "signature is {} bytes, longer than the {MAX_SIGNATURE_LEN} allowed",
            signature.len()
        )));
    }
    let raw = BASE64
        .decode(signature.as_bytes())
        .map_err(|_| malformed("signature is not valid standard Base64 (with padding)"))?;
    if raw.len() <= TAG_LEN {
        return Err(malformed(format!(
            "signature decodes to {} bytes; at least {} expected (20-byte tag and the original)",
            raw.len(),
            TAG_LEN + 1
        )));
    }
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&raw[..TAG_LEN]);
    let mut raw = raw;
    raw.drain(..TAG_LEN);
    let original = String::from_utf8(raw).map_err(|_| malformed("the signed text is not UTF-8"))?;
    let claims = parse_original(original)?;
    Ok(Parsed { tag, claims })
}

/// Parses the signed plain text into claims.
pub fn parse_original(original: String) -> Result<Claims, SignatureError> {
    let mut secret_id = None;
    let mut current = None;
    let mut expire = None;
    let mut random = None;
    let mut one_time = None;
    let mut policy = UploadPolicy::default();
    let mut extra = BTreeMap::new();
    let mut seen: u16 = 0;

    // memchr's SIMD search finds where each parameter ends and its first '%' or '+', if any:
    // `split('&')`, `split_once('=')` and a byte-by-byte scan per component took a third of
    // parse's time. Only the short name is looked through byte by byte, for its '='.
    let bytes = original.as_bytes();
    let mut start = 0;
    while start <= bytes.len() {
        let rest = &bytes[start..];
        let (len, first_escape) = match memchr::memchr3(b'&', b'%', b'+', rest) {
            Some(i) if rest[i] == b'&' => (i, None),
            Some(i) => (
                memchr::memchr(b'&', &rest[i..]).map_or(rest.len(), |j| i + j),
                Some(i),
            ),
            None => (rest.len(), None),
        };
        let pair = &rest[..len];
        let eq = pair
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| malformed("a parameter has no '='"))?;
        let (raw_name, raw_value) = (
            &original[start..start + eq],
            &original[start + eq + 1..start + len],
        );
        start += len + 1;
        let name_escaped = first_escape.is_some_and(|i| i < eq);
        let value_escaped = match first_escape {
            None => false,
            Some(i) if i > eq => true,
            Some(_) => memchr::memchr2(b'%', b'+', raw_value.as_bytes()).is_some(),
        };
        let name = query::decode_if(raw_name, name_escaped)
            .map_err(|_| malformed("a parameter name is badly encoded"))?;
        if name.is_empty() {
            return Err(malformed("a parameter has an empty name"));
        }
        let value = query::decode_if(raw_value, value_escaped)
            .map_err(|_| malformed(format!("parameter {} is badly encoded", printable(&name))))?;
        let Some(param) = Param::from_name(&name) else {
            if extra.contains_key(&*name) {
                return Err(twice(&name));
            }
            extra.insert(name.into_owned(), value.into_owned());
            continue;
        };
        let bit = 1u16 << param as u16;
        if seen & bit != 0 {
            return Err(twice(&name));
        }
        seen |= bit;
        match param {
            Param::SecretId => {
                if !is_valid_secret_id(&value) {
                    return Err(malformed(
                        "secretId is not 1-128 characters of A-Z a-z 0-9 _ -",
                    ));
                }
                secret_id = Some(value.into_owned());
            }
            Param::CurrentTimeStamp => current = Some(number::<i64>(&name, &value)?),
            Param::ExpireTime => expire = Some(number::<i64>(&name, &value)?),
            Param::Random => random = Some(number::<u32>(&name, &value)?),
            Param::OneTimeValid => {
                one_time = Some(match &*value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(malformed("oneTimeValid must be 0 or 1")),
                })
            }
            Param::ClassId => policy.class_id = Some(number(&name, &value)?),
            Param::Procedure => policy.procedure = Some(value.into_owned()),
            Param::TaskPriority => policy.task_priority = Some(number(&name, &value)?),
            Param::TaskNotifyMode => policy.task_notify_mode = Some(value.into_owned()),
            Param::SourceContext => policy.source_context = Some(value.into_owned()),
            Param::SessionContext => policy.session_context = Some(value.into_owned()),
            Param::VodSubAppId => policy.vod_sub_app_id = Some(number(&name, &value)?),
            Param::StorageRegion => policy.storage_region = Some(value.into_owned()),
            Param::MaxFileSize => policy.max_file_size = Some(number(&name, &value)?),
        }
    }

    let missing = |what: &str| malformed(format!("required parameter {what} is missing"));
    let secret_id = secret_id.ok_or_else(|| missing("secretId"))?;
    let current_time_stamp = current.ok_or_else(|| missing("currentTimeStamp"))?;
    let expire_time = expire.ok_or_else(|| missing("expireTime"))?;
    let random = random.ok_or_else(|| missing("random"))?;
    // checked_sub: a window wider than i64 (e.g. i64::MIN .. i64::MAX) must not wrap or panic.
    let window = expire_time.checked_sub(current_time_stamp);
    if !window.is_some_and(|w| (1..=MAX_VALIDITY_SECONDS).contains(&w)) {
        return Err(malformed(format!(
            "expireTime - currentTimeStamp must be 1 to {MAX_VALIDITY_SECONDS} seconds"
        )));
    }
    policy.validate().map_err(|e| malformed(e.to_string()))?;
    Ok(Claims {
        secret_id,
        current_time_stamp,
        expire_time,
        random,
        one_time_valid: one_time.unwrap_or(false),
        policy,
        extra,
        original,
    })
}

/// The parameters vod-signer knows; each has a bit in `parse_original`'s `seen`.
#[derive(Clone, Copy)]
enum Param {
    SecretId,
    CurrentTimeStamp,
    ExpireTime,
    Random,
    OneTimeValid,
    ClassId,
    Procedure,
    TaskPriority,
    TaskNotifyMode,
    SourceContext,
    SessionContext,
    VodSubAppId,
    StorageRegion,
    MaxFileSize,
}

impl Param {
    fn from_name(name: &str) -> Option<Param> {
        Some(match name {
            "secretId" => Param::SecretId,
            "currentTimeStamp" => Param::CurrentTimeStamp,
            "expireTime" => Param::ExpireTime,
            "random" => Param::Random,
            "oneTimeValid" => Param::OneTimeValid,
            "classId" => Param::ClassId,
            "procedure" => Param::Procedure,
            "taskPriority" => Param::TaskPriority,
            "taskNotifyMode" => Param::TaskNotifyMode,
            "sourceContext" => Param::SourceContext,
            "sessionContext" => Param::SessionContext,
            "vodSubAppId" => Param::VodSubAppId,
            "storageRegion" => Param::StorageRegion,
            "maxFileSize" => Param::MaxFileSize,
            _ => return None,
        })
    }
}

fn twice(name: &str) -> SignatureError {
    malformed(format!("parameter {} appears twice", printable(name)))
}

/// Parses a decimal number strictly: ASCII digits with an optional leading `-`, nothing else.
fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, SignatureError> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!("{name} is not a decimal number")));
    }
    value
        .parse()
        .map_err(|_| malformed(format!("{name} is out of range")))
}

/// A parameter name fit for an error message: quoted, control characters escaped, bounded.
fn printable(name: &str) -> String {
    let short: String = name.chars().take(40).collect();
    format!("{short:?}")
}

/// Checks the signature's time window against `now` with `leeway` seconds of clock skew.
pub fn check_time(claims: &Claims, now: i64, leeway: i64) -> Result<(), SignatureError> {
    if now > claims.expire_time.saturating_add(leeway) {
        return Err(SignatureError::Expired {
            expire_time: claims.expire_time,
            now,
        });
    }
    if claims.current_time_stamp > now.saturating_add(leeway) {
        return Err(SignatureError::NotYetValid {
            current_time_stamp: claims.current_time_stamp,
            now,
        });
    }
    Ok(())
}

/// A short fingerprint of a tag: enough to tell two signatures with the same nonce apart,
/// without storing anything that would help forge one.
pub fn fingerprint(tag: &[u8; TAG_LEN]) -> String {
    crate::digest::sha256_hex(tag, 12)
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
