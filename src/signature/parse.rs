//! Parsing: a signature back into its tag and [`Claims`], strictly (SPEC section 2), and the
//! checks that need no store: the tag against a key, the time window.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::{
    BASE64, Claims, MAX_VALIDITY_SECONDS, SecretKey, SignatureError, TAG_LEN, UploadPolicy,
    is_valid_secret_id, query,
};

/// Longest signature the parser looks at; a real one is a few hundred bytes, at most a few KiB.
pub const MAX_SIGNATURE_LEN: usize = 16 * 1024;

fn malformed(msg: impl Into<String>) -> SignatureError {
    SignatureError::Malformed(msg.into())
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
