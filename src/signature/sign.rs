//! Signing: a policy and a time window into the original, its tag and the signature.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::{BASE64, Claims, SecretKey, TAG_LEN, UploadPolicy, query};

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
    /// The upload policy, signed as the optional parameters.
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

/// A short fingerprint of a tag: enough to tell two signatures with the same nonce apart,
/// without storing anything that would help forge one.
pub fn fingerprint(tag: &[u8; TAG_LEN]) -> String {
    crate::digest::sha256_hex(tag, 12)
}
