//! The codec's hot paths for a typical signature (procedure + sourceContext + classId):
//! `sign`, `parse` + `verify`, and `KeyRing::authenticate`. Goal: `sign` and `parse` +
//! `verify` each under 0.5 µs.
//!
//! `cargo bench --bench codec`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vod_signer::keys::KeyRing;
use vod_signer::signature::{self, SecretKey, SignRequest, UploadPolicy};

const SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
const KEY: &[u8] = b"Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";

fn typical_policy() -> UploadPolicy {
    UploadPolicy {
        class_id: Some(1024),
        procedure: Some("QCVB_SimpleProcessFile".into()),
        source_context: Some("user-42/上传 #1".into()),
        ..UploadPolicy::default()
    }
}

fn request(policy: &UploadPolicy) -> SignRequest<'_> {
    SignRequest {
        secret_id: SECRET_ID,
        current_time_stamp: 1_700_000_000,
        expire_time: 1_700_003_600,
        random: 3_141_592_653,
        one_time_valid: true,
        policy,
    }
}

fn codec(c: &mut Criterion) {
    let key = SecretKey::new(KEY);
    let policy = typical_policy();
    let req = request(&policy);
    let signature = signature::sign(&key, &req).signature;

    c.bench_function("sign", |b| {
        b.iter(|| signature::sign(black_box(&key), black_box(&req)))
    });

    c.bench_function("parse+verify", |b| {
        b.iter(|| {
            let parsed = signature::parse(black_box(&signature)).unwrap();
            parsed.verify(black_box(&key)).unwrap();
            parsed
        })
    });

    // The two halves, to see where the time goes.
    c.bench_function("parse", |b| {
        b.iter(|| signature::parse(black_box(&signature)).unwrap())
    });
    // The floor under parse: Base64 decoding alone, with the engine parse uses.
    let engine = base64::engine::Simd::standard(base64::engine::general_purpose::PAD);
    c.bench_function("base64 decode", |b| {
        use base64::Engine as _;
        b.iter(|| black_box(&engine).decode(black_box(&signature)).unwrap())
    });
    let parsed = signature::parse(&signature).unwrap();
    c.bench_function("verify", |b| {
        b.iter(|| black_box(&parsed).verify(black_box(&key)).unwrap())
    });

    // A ring in rotation: the signature's key is one of three.
    let ring = KeyRing::new(
        [
            ("AKIDold".to_owned(), SecretKey::new(b"old")),
            (SECRET_ID.to_owned(), SecretKey::new(KEY)),
            ("AKIDnext".to_owned(), SecretKey::new(b"next")),
        ],
        SECRET_ID,
    )
    .unwrap();
    c.bench_function("KeyRing::authenticate", |b| {
        b.iter(|| ring.authenticate(black_box(&signature)).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec
}
criterion_main!(benches);
