//! Fuzzes the signature parser (SPEC section 2): arbitrary bytes are fed to
//! `vod_signer::signature::parse` three ways, and whatever parses is verified with a fixed key
//! and checked against the codec's invariants.
//!
//! 1. the bytes as the signature text, when they are UTF-8;
//! 2. the bytes Base64-encoded: the fuzzer controls the decoded tag ++ original directly;
//! 3. the bytes as the original, tagged with the fixed key: the path of authentic signatures.
//!
//! Run from `fuzz/` (see fuzz/README.md):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run -a parse corpus/parse seeds/parse -- -dict=parse.dict`

#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha1::Sha1;
use vod_signer::signature::{self, SecretKey, SignRequest, SignatureError};

const KEY: &[u8] = b"Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
static SECRET_KEY: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::new(KEY));

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text, false);
    }
    check(&BASE64.encode(data), false);
    check(&forge(data), true);
});

/// `data` as the original of a signature made with `KEY`.
fn forge(data: &[u8]) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(KEY).unwrap();
    mac.update(data);
    let mut raw = mac.finalize().into_bytes().to_vec();
    raw.extend_from_slice(data);
    BASE64.encode(raw)
}

fn check(input: &str, authentic: bool) {
    let parsed = match signature::parse(input) {
        Ok(parsed) => parsed,
        Err(SignatureError::Malformed(msg)) => {
            assert!(
                msg.len() < 400,
                "error message too long: {} bytes",
                msg.len()
            );
            return;
        }
        Err(other) => panic!("parse returned a non-Malformed error: {other:?}"),
    };
    let verified = parsed.verify(&SECRET_KEY);
    if authentic {
        assert_eq!(verified, Ok(()));
    } else {
        assert!(matches!(verified, Ok(()) | Err(SignatureError::Mismatch)));
    }

    // What parse accepts obeys SPEC section 2's rules.
    let c = &parsed.claims;
    assert!(signature::is_valid_secret_id(&c.secret_id));
    let window = c.expire_time.checked_sub(c.current_time_stamp);
    assert!(
        window.is_some_and(|w| (1..=signature::MAX_VALIDITY_SECONDS).contains(&w)),
        "accepted window {} .. {}",
        c.current_time_stamp,
        c.expire_time
    );
    assert_eq!(c.policy.validate(), Ok(()));
    let _ = signature::check_time(c, 1_700_000_000, 60);
    let _ = signature::fingerprint(&parsed.tag);
    serde_json::to_string(c).expect("claims serialize");

    // Parsing is a function of the original alone.
    assert_eq!(
        signature::parse_original(c.original.clone()).as_ref(),
        Ok(c)
    );

    // Re-signed in vod-signer's canonical form, the same claims come back.
    let signed = signature::sign(
        &SECRET_KEY,
        &SignRequest {
            secret_id: &c.secret_id,
            current_time_stamp: c.current_time_stamp,
            expire_time: c.expire_time,
            random: c.random,
            one_time_valid: c.one_time_valid,
            policy: &c.policy,
        },
    );
    // Percent-encoding may grow raw UTF-8 values past the parser's length limit.
    if signed.signature.len() <= signature::MAX_SIGNATURE_LEN {
        let again = signature::parse(&signed.signature).expect("a re-signed signature parses");
        assert_eq!(again.verify(&SECRET_KEY), Ok(()));
        assert_eq!(again.claims.secret_id, c.secret_id);
        assert_eq!(again.claims.current_time_stamp, c.current_time_stamp);
        assert_eq!(again.claims.expire_time, c.expire_time);
        assert_eq!(again.claims.random, c.random);
        assert_eq!(again.claims.one_time_valid, c.one_time_valid);
        assert_eq!(again.claims.policy, c.policy);
    }
}
