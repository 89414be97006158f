//! Fuzzes the request decoding path: arbitrary bytes decoded as each RPC's request message
//! (what the gRPC codec does with a frame), then handed to the service's RPC logic on the
//! in-memory store. Nothing may panic; every refusal must be a known reason; and no forged
//! input may be consumed (the fuzzer cannot know the key, so any successful consume of a
//! signature the service did not issue here is a bug).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vod_signer::keys::KeyRing;
use vod_signer::proto::{
    ConsumeSignatureRequest, IssueSignatureRequest, RevokeSignatureRequest, VerifySignatureRequest,
};
use vod_signer::service::{Settings, UseCases};
use vod_signer::signature::SecretKey;
use vod_signer::store::MemoryStore;

struct Harness {
    runtime: tokio::runtime::Runtime,
    use_cases: UseCases<MemoryStore>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let keys = KeyRing::new(
            [("AKIDfuzz".to_owned(), SecretKey::new(b"fuzz-key"))],
            "AKIDfuzz",
        )
        .unwrap();
        let use_cases = UseCases::new(
            Arc::new(MemoryStore::new()),
            keys.shared(),
            Settings::default(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Harness { runtime, use_cases }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let h = harness();
    h.runtime.block_on(async {
        let outcome = match selector % 4 {
            0 => match IssueSignatureRequest::decode(frame) {
                // Issuing from arbitrary requests is allowed; it must only not panic.
                Ok(req) => h.use_cases.issue(req.into()).await.map(|_| ()),
                Err(_) => return,
            },
            1 => match VerifySignatureRequest::decode(frame) {
                Ok(req) => h.use_cases.verify(&req.signature).await.map(|_| ()),
                Err(_) => return,
            },
            2 => match ConsumeSignatureRequest::decode(frame) {
                Ok(req) => {
                    let result = h.use_cases.consume(req.into()).await;
                    assert!(result.is_err(), "a signature nobody issued was consumed");
                    result.map(|_| ())
                }
                Err(_) => return,
            },
            _ => match RevokeSignatureRequest::decode(frame) {
                Ok(req) => h.use_cases.revoke(&req.signature).await.map(|_| ()),
                Err(_) => return,
            },
        };
        // A message may echo the request's own fields (e.g. an unknown secret_id), so only a
        // key that was not in the input counts as a leak.
        if let Err(refusal) = outcome
            && !frame.windows(8).any(|w| w == b"fuzz-key")
        {
            assert!(
                !refusal.message.contains("fuzz-key"),
                "the key leaked into a message"
            );
        }
    });
});
