//! The signature codec and the key ring, through the public API only (SPEC sections 2 and 5).
//!
//! - property tests: sign → parse round-trips any valid policy; any valid re-encoding parses;
//! - independent vectors: `tests/vectors/tencent_vectors.json` was made by a separate Python
//!   implementation of Tencent's published algorithm (standard library only), with
//!   `python3 tests/vectors/make_vectors.py > tests/vectors/tencent_vectors.json`
//!   run from the repository root;
//! - a malformed corpus, each case with the exact error and reason token;
//! - the clock checks at their leeway boundaries;
//! - `KeyRing::load_dir` on Kubernetes-style Secret volumes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::path::Path;

use vod_signer::keys::{KeyError, KeyRing};
use vod_signer::signature::{
    self, Claims, SecretKey, SignRequest, SignatureError, UploadPolicy, check_time,
    encode_component, parse, parse_original, sign,
};

const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
const SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
const SPEC_ORIGINAL: &str = "secretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE&currentTimeStamp=1700000000&expireTime=1700003600&random=3141592653&oneTimeValid=1&procedure=QCVB_SimpleProcessFile&sourceContext=user-42%2F%E4%B8%8A%E4%BC%A0%20%231";
const SPEC_SIGNATURE: &str = "kfBPqxhVp5sB0fXpreEftY/kUKlzZWNyZXRJZD1BS0lEejhrcmJzSjV5S0JaUXBuNzRXRmttTFB4M0VYQU1QTEUmY3VycmVudFRpbWVTdGFtcD0xNzAwMDAwMDAwJmV4cGlyZVRpbWU9MTcwMDAwMzYwMCZyYW5kb209MzE0MTU5MjY1MyZvbmVUaW1lVmFsaWQ9MSZwcm9jZWR1cmU9UUNWQl9TaW1wbGVQcm9jZXNzRmlsZSZzb3VyY2VDb250ZXh0PXVzZXItNDIlMkYlRTQlQjglOEElRTQlQkMlQTAlMjAlMjMx";

// ---------------------------------------------------------------------------------------------
// Helpers: an HMAC made without the library, so a hand-built original can be signed.

fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A signature over arbitrary original bytes, tagged with `KEY`.
fn forge(original: &[u8]) -> String {
    let mut raw = hmac_sha1(KEY.as_bytes(), original).to_vec();
    raw.extend_from_slice(original);
    BASE64.encode(raw)
}

/// HMAC pads keys with zeros to 64 bytes and hashes longer ones: two keys with the same
/// normal form are the same HMAC key.
fn hmac_normal_form(key: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha1::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    while k.last() == Some(&0) {
        k.pop();
    }
    k
}

fn spec_policy() -> UploadPolicy {
    UploadPolicy {
        procedure: Some("QCVB_SimpleProcessFile".into()),
        source_context: Some("user-42/上传 #1".into()),
        ..UploadPolicy::default()
    }
}

fn request<'a>(policy: &'a UploadPolicy) -> SignRequest<'a> {
    SignRequest {
        secret_id: SECRET_ID,
        current_time_stamp: 1_700_000_000,
        expire_time: 1_700_003_600,
        random: 3_141_592_653,
        one_time_valid: true,
        policy,
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// A string of any Unicode scalar values, cut to at most `max_bytes` UTF-8 bytes.
fn text(max_chars: usize, max_bytes: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max_chars).prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max_bytes {
                break;
            }
            s.push(c);
        }
        s
    })
}

/// Any policy that `UploadPolicy::validate` accepts, contexts up to their exact limits.
fn valid_policy() -> impl Strategy<Value = UploadPolicy> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(text(40, 160)),
        proptest::option::of(-10i32..=10),
        proptest::option::of(prop_oneof![Just("Finish"), Just("Change"), Just("None")]),
        proptest::option::of(text(260, signature::MAX_SOURCE_CONTEXT)),
        proptest::option::of(text(1010, signature::MAX_SESSION_CONTEXT)),
        proptest::option::of(any::<u64>()),
        proptest::option::of(text(30, signature::MAX_STORAGE_REGION)),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(class_id, procedure, prio, mode, source, session, sub_app, region, max_size)| {
                let has_procedure = procedure.is_some();
                UploadPolicy {
                    class_id,
                    procedure,
                    task_priority: prio.filter(|_| has_procedure),
                    task_notify_mode: mode.filter(|_| has_procedure).map(str::to_owned),
                    source_context: source,
                    session_context: session,
                    vod_sub_app_id: sub_app,
                    storage_region: region,
                    max_file_size: max_size,
                }
            },
        )
}

/// (currentTimeStamp, expireTime): realistic times, and anywhere in i64 that does not overflow.
fn times() -> impl Strategy<Value = (i64, i64)> {
    let window = 1i64..=signature::MAX_VALIDITY_SECONDS;
    prop_oneof![
        (0i64..=4_102_444_800, window.clone()),
        (
            i64::MIN..=i64::MAX - signature::MAX_VALIDITY_SECONDS,
            window
        ),
    ]
    .prop_map(|(t, w)| (t, t + w))
}

fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=100)
}

/// Re-encodes `value` in some other valid way: unreserved bytes literal or escaped, escapes
/// upper or lower case, spaces as `+` or `%20`. `choices` picks per byte.
fn reencode(value: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, &b) in value.as_bytes().iter().enumerate() {
        let choice = choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 4;
        let literal_ok = b.is_ascii_alphanumeric() || b"-_.~!*'()".contains(&b);
        match (b, choice) {
            (b' ', 0 | 1) => out.push('+'),
            (_, 0) if literal_ok => out.push(b as char),
            (_, 1 | 3) => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sign_then_parse_round_trips(
        policy in valid_policy(),
        secret_id in "[A-Za-z0-9_-]{1,128}",
        (current, expire) in times(),
        random in any::<u32>(),
        one_time_valid in any::<bool>(),
        key in key_bytes(),
        other_key in key_bytes(),
    ) {
        prop_assert_eq!(policy.validate(), Ok(()));
        let req = SignRequest {
            secret_id: &secret_id,
            current_time_stamp: current,
            expire_time: expire,
            random,
            one_time_valid,
            policy: &policy,
        };
        let signed = sign(&SecretKey::new(&key), &req);
        let parsed = parse(&signed.signature).unwrap();
        prop_assert_eq!(&parsed.claims, &signed.claims);
        prop_assert_eq!(parsed.tag, signed.tag);
        prop_assert_eq!(&parsed.claims.policy, &policy);
        prop_assert!(parsed.claims.extra.is_empty());
        prop_assert_eq!(parsed.verify(&SecretKey::new(&key)), Ok(()));

        prop_assume!(hmac_normal_form(&key) != hmac_normal_form(&other_key));
        prop_assert_eq!(
            parsed.verify(&SecretKey::new(&other_key)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_valid_encoding_parses_to_the_same_claims(
        policy in valid_policy(),
        choices in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        // Built by hand: same parameters, other (valid) encodings, signed without the library.
        let mut original = format!(
            "secretId={SECRET_ID}&currentTimeStamp=1700000000&expireTime=1700003600&random=7"
        );
        let mut add = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                original.push('&');
                original.push_str(name);
                original.push('=');
                original.push_str(&reencode(&v, &choices));
            }
        };
        add("classId", policy.class_id.map(|v| v.to_string()));
        add("procedure", policy.procedure.clone());
        add("taskPriority", policy.task_priority.map(|v| v.to_string()));
        add("taskNotifyMode", policy.task_notify_mode.clone());
        add("sourceContext", policy.source_context.clone());
        add("sessionContext", policy.session_context.clone());
        add("vodSubAppId", policy.vod_sub_app_id.map(|v| v.to_string()));
        add("storageRegion", policy.storage_region.clone());
        add("maxFileSize", policy.max_file_size.map(|v| v.to_string()));

        let parsed = parse(&forge(original.as_bytes())).unwrap();
        prop_assert_eq!(&parsed.claims.policy, &policy);
        prop_assert_eq!(&parsed.claims.original, &original);
        prop_assert_eq!(parsed.verify(&SecretKey::new(KEY.as_bytes())), Ok(()));
        prop_assert_eq!(parse_original(original.clone()).unwrap(), parsed.claims);
    }

    #[test]
    fn encode_component_matches_a_reference(value in text(64, 256)) {
        let mut expected = String::new();
        for &b in value.as_bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~!*'()".contains(&b) {
                expected.push(b as char);
            } else {
                expected.push_str(&format!("%{b:02X}"));
            }
        }
        prop_assert_eq!(encode_component(&value), expected);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(s in "\\PC{0,200}") {
        let _ = parse(&s);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_signed_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(parsed) = parse(&forge(&body)) {
            prop_assert_eq!(parsed.verify(&SecretKey::new(KEY.as_bytes())), Ok(()));
        }
    }
}

#[test]
fn plus_and_lower_case_escapes_of_the_spec_example() {
    let original = "secretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE&currentTimeStamp=1700000000&expireTime=1700003600&random=3141592653&oneTimeValid=1&procedure=QCVB_SimpleProcessFile&sourceContext=user-42%2f%e4%b8%8a%E4%bc%a0+%231";
    let parsed = parse(&forge(original.as_bytes())).unwrap();
    assert_eq!(parsed.claims.policy, spec_policy());
    assert_eq!(parsed.claims.original, original);
    parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
    // Same claims as the SPEC's, but other bytes: another tag.
    let spec = parse(SPEC_SIGNATURE).unwrap();
    assert_eq!(spec.claims.policy, parsed.claims.policy);
    assert_ne!(spec.tag, parsed.tag);
}

// ---------------------------------------------------------------------------------------------
// Independent vectors.

#[derive(Debug, Deserialize)]
struct VectorFile {
    sign: Vec<Vector>,
    parse_only: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    secret_key: String,
    secret_id: String,
    current_time_stamp: i64,
    expire_time: i64,
    random: u32,
    one_time_valid: bool,
    policy: VectorPolicy,
    extra: BTreeMap<String, String>,
    original: String,
    signature: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorPolicy {
    class_id: Option<u64>,
    procedure: Option<String>,
    task_priority: Option<i32>,
    task_notify_mode: Option<String>,
    source_context: Option<String>,
    session_context: Option<String>,
    vod_sub_app_id: Option<u64>,
    storage_region: Option<String>,
    max_file_size: Option<u64>,
}

impl From<VectorPolicy> for UploadPolicy {
    fn from(p: VectorPolicy) -> UploadPolicy {
        UploadPolicy {
            class_id: p.class_id,
            procedure: p.procedure,
            task_priority: p.task_priority,
            task_notify_mode: p.task_notify_mode,
            source_context: p.source_context,
            session_context: p.session_context,
            vod_sub_app_id: p.vod_sub_app_id,
            storage_region: p.storage_region,
            max_file_size: p.max_file_size,
        }
    }
}

fn vectors() -> VectorFile {
    serde_json::from_str(include_str!("vectors/tencent_vectors.json")).unwrap()
}

impl Vector {
    fn expected_claims(self) -> (Claims, SecretKey, String) {
        let claims = Claims {
            secret_id: self.secret_id,
            current_time_stamp: self.current_time_stamp,
            expire_time: self.expire_time,
            random: self.random,
            one_time_valid: self.one_time_valid,
            policy: self.policy.into(),
            extra: self.extra,
            original: self.original,
        };
        (
            claims,
            SecretKey::new(self.secret_key.as_bytes()),
            self.signature,
        )
    }
}

#[test]
fn vectors_include_the_spec_example() {
    let file = vectors();
    let spec = file.sign.iter().find(|v| v.name == "spec_example").unwrap();
    assert_eq!(spec.original, SPEC_ORIGINAL);
    assert_eq!(spec.signature, SPEC_SIGNATURE);
    assert!(file.sign.len() >= 10, "{}", file.sign.len());
}

#[test]
fn sign_reproduces_independent_vectors_byte_for_byte() {
    for v in vectors().sign {
        let name = v.name.clone();
        let (claims, key, expected) = v.expected_claims();
        assert_eq!(claims.policy.validate(), Ok(()), "{name}");
        let signed = sign(
            &key,
            &SignRequest {
                secret_id: &claims.secret_id,
                current_time_stamp: claims.current_time_stamp,
                expire_time: claims.expire_time,
                random: claims.random,
                one_time_valid: claims.one_time_valid,
                policy: &claims.policy,
            },
        );
        assert_eq!(signed.claims.original, claims.original, "{name}: original");
        assert_eq!(signed.signature, expected, "{name}: signature");
        assert_eq!(signed.claims, claims, "{name}: claims");
    }
}

#[test]
fn parse_and_verify_accept_independent_vectors() {
    let file = vectors();
    assert!(!file.parse_only.is_empty());
    for v in file.sign.into_iter().chain(file.parse_only) {
        let name = v.name.clone();
        let (claims, key, signature) = v.expected_claims();
        let parsed = parse(&signature).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.claims, claims, "{name}");
        assert_eq!(parsed.verify(&key), Ok(()), "{name}");
        assert_eq!(
            parsed.verify(&SecretKey::new(b"not the key")),
            Err(SignatureError::Mismatch),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed corpus.

/// The original with the four required parameters, then `rest` (which starts with `&`).
fn with_required(rest: &str) -> String {
    format!("secretId=AKID&currentTimeStamp=1700000000&expireTime=1700003600&random=1{rest}")
}

#[track_caller]
fn assert_malformed(signature: &str, fragment: &str) {
    match parse(signature) {
        Err(err @ SignatureError::Malformed(_)) => {
            assert_eq!(err.reason().as_str(), "SIGNATURE_MALFORMED");
            let SignatureError::Malformed(msg) = &err else {
                unreachable!()
            };
            assert!(msg.contains(fragment), "message {msg:?} lacks {fragment:?}");
        }
        other => panic!("expected Malformed containing {fragment:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_original_malformed(original: &str, fragment: &str) {
    assert_malformed(&forge(original.as_bytes()), fragment);
}

#[test]
fn the_well_formed_base_of_the_corpus_parses() {
    // Every corpus case below is one change away from this.
    let parsed = parse(&forge(with_required("&procedure=P").as_bytes())).unwrap();
    parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
}

#[test]
fn malformed_base64_and_length() {
    // Truncated by one character: no longer Base64 with padding.
    assert_malformed(&SPEC_SIGNATURE[..SPEC_SIGNATURE.len() - 1], "Base64");
    assert_malformed(&SPEC_SIGNATURE[..SPEC_SIGNATURE.len() - 2], "Base64");
    assert_malformed("kfBPqxhV!p5sB0fX", "Base64");
    assert_malformed("a GVsbG8=", "Base64");
    assert_malformed(&format!("{SPEC_SIGNATURE}\n"), "Base64");
    // URL-safe alphabet and missing padding are not standard Base64.
    assert_malformed(&SPEC_SIGNATURE.replace('/', "_"), "Base64");
    assert_malformed(&BASE64.encode([0u8; 22]).replace('=', ""), "Base64");
    // Non-canonical trailing bits.
    assert_malformed("AAAAAAAAAAAAAAAAAAAAAAAAAB==", "Base64");
    // Too short: the tag alone, or less.
    assert_malformed("", "at least 21");
    assert_malformed(&BASE64.encode([7u8; 20]), "at least 21");
    assert_malformed(&BASE64.encode([7u8; 1]), "at least 21");
    // 1 MB of garbage, Base64 or not.
    assert_malformed(&"A".repeat(1 << 20), "longer than");
    assert_malformed(&"\u{0}\u{ff}~".repeat(350_000), "longer than");
    assert_malformed(&"x".repeat(signature::MAX_SIGNATURE_LEN + 1), "longer than");
}

#[test]
fn truncated_on_a_base64_boundary() {
    // Cut 40 characters (30 bytes): still Base64, a parseable original, but the wrong HMAC.
    let cut = &SPEC_SIGNATURE[..SPEC_SIGNATURE.len() - 40];
    let parsed = parse(cut).unwrap();
    assert!(parsed.claims.original.ends_with("&sourceContext=user-"));
    assert!(SPEC_ORIGINAL.starts_with(&parsed.claims.original));
    let err = parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap_err();
    assert_eq!(err, SignatureError::Mismatch);
    assert_eq!(err.reason().as_str(), "SIGNATURE_MISMATCH");
    // Cut inside an escape or a name: malformed.
    assert_malformed(&SPEC_SIGNATURE[..SPEC_SIGNATURE.len() - 8], "badly encoded");
    assert_malformed(&SPEC_SIGNATURE[..SPEC_SIGNATURE.len() - 48], "no '='");
}

#[test]
fn malformed_structure() {
    assert_original_malformed(
        "secretId=AKID&currentTimeStamp=1700000000&expireTime=1700003600",
        "random is missing",
    );
    assert_original_malformed(
        "random=1&currentTimeStamp=1700000000&expireTime=1700003600",
        "secretId is missing",
    );
    assert_original_malformed(
        "secretId=AKID&expireTime=1&random=1",
        "currentTimeStamp is missing",
    );
    assert_original_malformed(
        "secretId=AKID&currentTimeStamp=1&random=1",
        "expireTime is missing",
    );
    assert_original_malformed(
        &with_required("&expireTime=1700003600"),
        "\"expireTime\" appears twice",
    );
    // A duplicate spelled differently is still a duplicate.
    assert_original_malformed(&with_required("&expire%54ime=1700003601"), "appears twice");
    assert_original_malformed(
        &with_required("&procedure=P&procedure=P"),
        "\"procedure\" appears twice",
    );
    assert_original_malformed(&with_required("&foo=1&foo=2"), "\"foo\" appears twice");
    assert_original_malformed(&with_required("&noequals"), "no '='");
    assert_original_malformed(&with_required("&"), "no '='");
    assert_original_malformed(&with_required("&&procedure=P"), "no '='");
    assert_original_malformed(&with_required("&=value"), "empty name");
    assert_original_malformed("x", "no '='");
    assert_original_malformed(&with_required("&secretId=AKID"), "appears twice");
}

#[test]
fn malformed_values() {
    assert_original_malformed(
        &with_required("&procedure=P&taskPriority=11"),
        "taskPriority 11",
    );
    assert_original_malformed(
        &with_required("&procedure=P&taskPriority=-11"),
        "taskPriority -11",
    );
    assert_original_malformed(
        &with_required("&procedure=P&taskPriority=99999999999"),
        "taskPriority is out of range",
    );
    assert_original_malformed(
        &with_required("&taskPriority=1"),
        "taskPriority is only allowed together with procedure",
    );
    assert_original_malformed(
        &with_required("&taskNotifyMode=Finish"),
        "taskNotifyMode is only allowed together with procedure",
    );
    assert_original_malformed(
        &with_required("&procedure=P&taskNotifyMode=finish"),
        "taskNotifyMode must be",
    );
    assert_original_malformed(
        &with_required("&procedure=P&taskNotifyMode=Always"),
        "taskNotifyMode must be",
    );
    assert_original_malformed(
        &with_required(&format!("&sourceContext={}", "a".repeat(251))),
        "sourceContext is 251 bytes",
    );
    assert_original_malformed(
        &with_required(&format!("&sourceContext={}", "%C3%A9".repeat(125) + "a")),
        "sourceContext is 251 bytes",
    );
    assert_original_malformed(
        &with_required(&format!("&sessionContext={}", "x".repeat(1001))),
        "sessionContext is 1001 bytes",
    );
    assert_original_malformed(&with_required("&oneTimeValid=2"), "oneTimeValid");
    assert_original_malformed(&with_required("&oneTimeValid=true"), "oneTimeValid");
    assert_original_malformed(&with_required("&classId=-1"), "classId is out of range");
    assert_original_malformed(&with_required("&classId=1e3"), "classId is not a decimal");
    assert_original_malformed(
        &with_required("&maxFileSize=18446744073709551616"),
        "maxFileSize is out of range",
    );
    assert_original_malformed(
        &with_required("&vodSubAppId="),
        "vodSubAppId is not a decimal",
    );
    assert_original_malformed(
        "secretId=AK%20ID&currentTimeStamp=1&expireTime=2&random=1",
        "secretId is not",
    );
    assert_original_malformed(
        &format!(
            "secretId={}&currentTimeStamp=1&expireTime=2&random=1",
            "a".repeat(129)
        ),
        "secretId is not",
    );
}

#[test]
fn malformed_numbers_and_window() {
    let required = |t: &str, e: &str, r: &str| {
        format!("secretId=AKID&currentTimeStamp={t}&expireTime={e}&random={r}")
    };
    assert_original_malformed(
        &required("17e8", "1700003600", "1"),
        "currentTimeStamp is not a decimal number",
    );
    assert_original_malformed(
        &required("", "1700003600", "1"),
        "currentTimeStamp is not a decimal number",
    );
    assert_original_malformed(
        &required("+1700000000", "1700003600", "1"),
        "currentTimeStamp is not a decimal number",
    );
    assert_original_malformed(
        &required(" 1700000000", "1700003600", "1"),
        "currentTimeStamp is not a decimal number",
    );
    assert_original_malformed(&required("-", "1700003600", "1"), "not a decimal number");
    assert_original_malformed(
        &required("1700000000", "1700003600", "4294967296"),
        "random is out of range",
    );
    assert_original_malformed(&required("1700000000", "1700003600", "-1"), "random");
    assert_original_malformed(
        &required("1700000000", "99999999999999999999", "1"),
        "expireTime is out of range",
    );
    // Window: more than 90 days, zero, negative.
    let window = "expireTime - currentTimeStamp must be 1 to 7776000 seconds";
    assert_original_malformed(&required("1700000000", "1707776001", "1"), window);
    assert_original_malformed(&required("1700000000", "1700000000", "1"), window);
    assert_original_malformed(&required("1700000000", "1699999999", "1"), window);
    // Exactly 90 days and exactly 1 second are fine.
    parse(&forge(required("1700000000", "1707776000", "1").as_bytes())).unwrap();
    parse(&forge(required("1700000000", "1700000001", "1").as_bytes())).unwrap();
}

#[test]
fn window_wider_than_i64_is_malformed_not_a_panic() {
    // expireTime - currentTimeStamp overflows i64: must be refused, not wrap or panic.
    let original = format!(
        "secretId=AKID&currentTimeStamp={}&expireTime={}&random=1",
        i64::MIN,
        i64::MAX
    );
    assert_original_malformed(&original, "expireTime - currentTimeStamp");
    let original = "secretId=AKID&currentTimeStamp=-9000000000000000000&expireTime=9000000000000000000&random=1";
    assert_original_malformed(original, "expireTime - currentTimeStamp");
}

#[test]
fn malformed_encoding() {
    // The original itself is not UTF-8.
    let mut raw = with_required("&sourceContext=").into_bytes();
    raw.extend_from_slice(&[0xC3, 0x28]);
    assert_malformed(&forge(&raw), "not UTF-8");
    assert_malformed(&forge(&[0xFF; 40]), "not UTF-8");
    // Valid UTF-8 that decodes to invalid UTF-8.
    assert_original_malformed(
        &with_required("&sourceContext=%C3%28"),
        "parameter \"sourceContext\" is badly encoded",
    );
    assert_original_malformed(&with_required("&procedure=%FF"), "badly encoded");
    assert_original_malformed(&with_required("&procedure=%ED%A0%80"), "badly encoded"); // surrogate
    assert_original_malformed(&with_required("&procedure=%C0%AF"), "badly encoded"); // overlong
    // Bad escapes.
    assert_original_malformed(&with_required("&procedure=%"), "badly encoded");
    assert_original_malformed(&with_required("&procedure=%4"), "badly encoded");
    assert_original_malformed(&with_required("&procedure=%G1"), "badly encoded");
    assert_original_malformed(&with_required("&procedure=100%"), "badly encoded");
    assert_original_malformed(&with_required("&%ZZ=1"), "name is badly encoded");
    assert_original_malformed(&with_required("&%FF=1"), "name is badly encoded");
}

#[test]
fn unknown_parameters_are_kept_in_extra() {
    let original = with_required("&isTranscode=1&x%20y=a+b%26c&empty=&procedure=P");
    let parsed = parse(&forge(original.as_bytes())).unwrap();
    let extra: Vec<(&str, &str)> = parsed
        .claims
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        extra,
        [("empty", ""), ("isTranscode", "1"), ("x y", "a b&c")]
    );
    assert_eq!(parsed.claims.policy.procedure.as_deref(), Some("P"));
    assert!(!parsed.claims.one_time_valid);
    parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
    // The HMAC covers them: dropping one breaks the signature.
    let without = original.replace("&isTranscode=1", "");
    let mut raw = hmac_sha1(KEY.as_bytes(), original.as_bytes()).to_vec();
    raw.extend_from_slice(without.as_bytes());
    let tampered = parse(&BASE64.encode(raw)).unwrap();
    assert_eq!(
        tampered.verify(&SecretKey::new(KEY.as_bytes())),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn tampering_with_any_byte_is_caught() {
    let raw = BASE64.decode(SPEC_SIGNATURE).unwrap();
    let key = SecretKey::new(KEY.as_bytes());
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        match parse(&BASE64.encode(&bad)) {
            Ok(parsed) => assert_eq!(
                parsed.verify(&key),
                Err(SignatureError::Mismatch),
                "byte {i}"
            ),
            Err(e) => assert!(matches!(e, SignatureError::Malformed(_)), "byte {i}: {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clock checks.

#[test]
fn check_time_boundaries() {
    let claims = parse(SPEC_SIGNATURE).unwrap().claims; // valid 1700000000..=1700003600
    let (t, e) = (1_700_000_000, 1_700_003_600);
    for leeway in [0, 1, 60, 300] {
        // Inside the window, and exactly at its leeway-widened edges.
        check_time(&claims, t, leeway).unwrap();
        check_time(&claims, e, leeway).unwrap();
        check_time(&claims, e + leeway, leeway).unwrap();
        check_time(&claims, t - leeway, leeway).unwrap();
        // One second past.
        let err = check_time(&claims, e + leeway + 1, leeway).unwrap_err();
        assert_eq!(
            err,
            SignatureError::Expired {
                expire_time: e,
                now: e + leeway + 1
            }
        );
        assert_eq!(err.reason().as_str(), "SIGNATURE_EXPIRED");
        let err = check_time(&claims, t - leeway - 1, leeway).unwrap_err();
        assert_eq!(
            err,
            SignatureError::NotYetValid {
                current_time_stamp: t,
                now: t - leeway - 1
            }
        );
        assert_eq!(err.reason().as_str(), "SIGNATURE_NOT_YET_VALID");
    }
    // Far away clocks and huge leeways neither overflow nor pass wrongly.
    assert!(matches!(
        check_time(&claims, i64::MAX, 60),
        Err(SignatureError::Expired { .. })
    ));
    assert!(matches!(
        check_time(&claims, i64::MIN, 60),
        Err(SignatureError::NotYetValid { .. })
    ));
    check_time(&claims, i64::MAX, i64::MAX).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Key ring.

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
}

/// A Secret volume as the kubelet lays it out: files in a timestamped folder, `..data`
/// pointing at it, and one top-level symlink per key through `..data`.
fn kubernetes_volume(keys: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2026_01_02_03_04_05.123456789");
    std::fs::create_dir(&data).unwrap();
    for (id, key) in keys {
        write(&data.join(id), key);
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), dir.path().join("..data")).unwrap();
    for (id, _) in keys {
        std::os::unix::fs::symlink(format!("..data/{id}"), dir.path().join(id)).unwrap();
    }
    dir
}

fn sign_with(key: &[u8], secret_id: &str) -> String {
    let policy = spec_policy();
    let mut req = request(&policy);
    req.secret_id = secret_id;
    sign(&SecretKey::new(key), &req).signature
}

#[test]
fn key_ring_loads_a_kubernetes_secret_volume() {
    let dir = kubernetes_volume(&[
        ("AKIDold", "old-key\n"),
        ("AKIDnew", "new-key"),
        ("AKID_third-3", "third\r\n"),
    ]);
    let ring = KeyRing::load_dir(dir.path(), Some("AKIDnew")).unwrap();
    assert_eq!(
        ring.secret_ids().collect::<Vec<_>>(),
        ["AKID_third-3", "AKIDnew", "AKIDold"]
    );
    assert_eq!(ring.active_id(), "AKIDnew");
    // Every key verifies (rotation), with its trailing newline trimmed.
    for (id, key) in [
        ("AKIDold", "old-key"),
        ("AKIDnew", "new-key"),
        ("AKID_third-3", "third"),
    ] {
        let parsed = ring.authenticate(&sign_with(key.as_bytes(), id)).unwrap();
        assert_eq!(parsed.claims.secret_id, id);
    }
    // The newline is not part of the key.
    assert_eq!(
        ring.authenticate(&sign_with(b"old-key\n", "AKIDold"))
            .unwrap_err(),
        SignatureError::Mismatch
    );
    // Another key's signature under this SecretId.
    assert_eq!(
        ring.authenticate(&sign_with(b"new-key", "AKIDold"))
            .unwrap_err(),
        SignatureError::Mismatch
    );
    let err = ring.authenticate(&sign_with(b"x", "AKIDgone")).unwrap_err();
    assert_eq!(err, SignatureError::UnknownSecretId("AKIDgone".into()));
    assert_eq!(err.reason().as_str(), "UNKNOWN_SECRET_ID");
    assert_eq!(
        ring.authenticate("garbage").unwrap_err().reason().as_str(),
        "SIGNATURE_MALFORMED"
    );
    // No secret in Debug.
    let debug = format!("{ring:?}");
    assert!(
        !debug.contains("old-key") && !debug.contains("new-key"),
        "{debug}"
    );
}

#[test]
fn key_ring_active_key_rules() {
    let dir = kubernetes_volume(&[("AKIDa", "a"), ("AKIDb", "b")]);
    assert!(matches!(
        KeyRing::load_dir(dir.path(), None),
        Err(KeyError::NoActive(2))
    ));
    assert!(matches!(
        KeyRing::load_dir(dir.path(), Some("")),
        Err(KeyError::NoActive(2))
    ));
    assert!(matches!(
        KeyRing::load_dir(dir.path(), Some("AKIDc")),
        Err(KeyError::UnknownActive(id)) if id == "AKIDc"
    ));
    let ring = KeyRing::load_dir(dir.path(), Some("AKIDa")).unwrap();
    assert_eq!(ring.active_id(), "AKIDa");

    let single = kubernetes_volume(&[("only", "k")]);
    assert_eq!(
        KeyRing::load_dir(single.path(), None).unwrap().active_id(),
        "only"
    );
}

#[test]
fn key_ring_ignores_dot_files() {
    let dir = kubernetes_volume(&[("AKID", "k")]);
    // Names that would be refused if they were read at all.
    write(&dir.path().join(".hidden file{}"), "x");
    write(&dir.path().join(".AKIDdot"), "x");
    let ring = KeyRing::load_dir(dir.path(), None).unwrap();
    assert_eq!(ring.secret_ids().collect::<Vec<_>>(), ["AKID"]);
}

#[test]
fn key_ring_refuses_bad_file_names_naming_the_file() {
    let long = "a".repeat(129);
    for bad in [
        "bad{id}",
        "has space",
        "dotted.name",
        "ünïcode",
        "a:b",
        long.as_str(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("AKIDgood"), "k");
        write(&dir.path().join(bad), "k");
        let err = KeyRing::load_dir(dir.path(), None).unwrap_err();
        assert!(
            matches!(err, KeyError::BadSecretId { .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains(bad), "{bad}: {err}");
        assert!(!err.to_string().contains("AKIDgood"), "{err}");
    }
    // A symlink with a bad name into ..data is refused too.
    let dir = kubernetes_volume(&[("AKID", "k")]);
    std::os::unix::fs::symlink("..data/AKID", dir.path().join("bad name")).unwrap();
    let err = KeyRing::load_dir(dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("bad name"), "{err}");
    // 128 characters is still fine.
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("b".repeat(128)), "k");
    KeyRing::load_dir(dir.path(), None).unwrap();
}

#[test]
fn key_ring_other_load_errors_never_show_the_key() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        KeyRing::load_dir(dir.path(), None),
        Err(KeyError::NoKeys { .. })
    ));
    write(&dir.path().join("AKIDempty"), "\n");
    let err = KeyRing::load_dir(dir.path(), None).unwrap_err();
    assert!(matches!(err, KeyError::EmptyKey { .. }), "{err:?}");
    assert!(err.to_string().contains("AKIDempty"), "{err}");
    assert!(matches!(
        KeyRing::load_dir(&dir.path().join("missing"), None),
        Err(KeyError::ReadDir { .. })
    ));
    // A dangling symlink (a half-updated volume) is an error naming it.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("..data/AKIDx", dir.path().join("AKIDx")).unwrap();
    let err = KeyRing::load_dir(dir.path(), None).unwrap_err();
    assert!(matches!(err, KeyError::ReadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("AKIDx"), "{err}");
}

/// The largest policy `validate` accepts still signs into a signature `parse` accepts, so
/// the service can never issue a signature it would refuse at consume.
#[test]
fn the_largest_valid_policy_round_trips() {
    use vod_signer::signature::{
        MAX_PROCEDURE, MAX_SESSION_CONTEXT, MAX_SOURCE_CONTEXT, MAX_STORAGE_REGION,
    };
    let policy = UploadPolicy {
        class_id: Some(u64::MAX),
        procedure: Some("\u{7f}".repeat(MAX_PROCEDURE)),
        task_priority: Some(-10),
        task_notify_mode: Some("Change".into()),
        source_context: Some("#".repeat(MAX_SOURCE_CONTEXT)),
        session_context: Some("%".repeat(MAX_SESSION_CONTEXT)),
        vod_sub_app_id: Some(u64::MAX),
        storage_region: Some(" ".repeat(MAX_STORAGE_REGION)),
        max_file_size: Some(u64::MAX),
    };
    policy.validate().unwrap();
    let secret_id = "A".repeat(128);
    let req = SignRequest {
        secret_id: &secret_id,
        current_time_stamp: i64::MAX - 7_776_000,
        expire_time: i64::MAX,
        random: u32::MAX,
        one_time_valid: true,
        policy: &policy,
    };
    let signed = sign(&SecretKey::new(b"k"), &req);
    assert_eq!(parse(&signed.signature).unwrap().claims, signed.claims);
    let too_long = UploadPolicy {
        procedure: Some("p".repeat(MAX_PROCEDURE + 1)),
        ..UploadPolicy::default()
    };
    assert!(too_long.validate().is_err());
}
