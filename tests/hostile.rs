//! Hostile input through the gRPC surface: random bytes as request frames, invalid UTF-8,
//! truncated messages, huge fields, and thousands of mutated signatures. Every call must get
//! a typed refusal (never an acceptance, never a crash), and the server must stay healthy.

mod common;

use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BufMut};
use common::*;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use vod_signer::proto::{ConsumeSignatureRequest, IssueSignatureRequest};
use vod_signer::reason::Reason;

/// Sends request bytes as they are and returns response bytes as they are.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

const RPCS: [&str; 4] = [
    "/vodsigner.v1.SignatureService/IssueSignature",
    "/vodsigner.v1.SignatureService/VerifySignature",
    "/vodsigner.v1.SignatureService/ConsumeSignature",
    "/vodsigner.v1.SignatureService/RevokeSignature",
];

async fn raw_call(
    channel: &Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A protobuf message with one length-delimited field 1 holding `value`.
fn field1(value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0a];
    let mut len = value.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(value);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_broken_frames_get_typed_refusals() {
    let server = TestServer::start(Backend::Redis).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let mut by_reason = std::collections::BTreeMap::new();
    for i in 0..2000 {
        let path = RPCS[i % RPCS.len()];
        let body = match i % 4 {
            0 => {
                let n = rng.below(64);
                rng.bytes(n)
            }
            1 => {
                // Likely invalid UTF-8 in a string field.
                let n = rng.below(300);
                field1(&rng.bytes(n))
            }
            2 => {
                let mut m = field1(b"abcdefgh");
                m.truncate(rng.below(m.len())); // truncated message
                m
            }
            _ => {
                let mut m = field1(&vec![b'A'; 1 + rng.below(40)]);
                m[1] = m[1].wrapping_add(1 + rng.below(5) as u8); // length beyond the end
                m
            }
        };
        match raw_call(&channel, path, body.clone()).await {
            // Some random bytes decode into a valid IssueSignatureRequest; issuing is fine.
            Ok(_) => assert!(path.ends_with("IssueSignature"), "{path} accepted {body:?}"),
            Err(status) => {
                let reason = reason_of(&status);
                if !path.ends_with("IssueSignature") {
                    assert!(
                        matches!(reason, Reason::InvalidRequest | Reason::SignatureMalformed),
                        "{path} {body:?}: {reason}"
                    );
                }
                *by_reason.entry(reason.as_str()).or_insert(0) += 1;
            }
        }
    }
    assert!(
        by_reason.get("INVALID_REQUEST").copied().unwrap_or(0) > 100,
        "{by_reason:?}"
    );
    server.wait_serving(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn invalid_utf8_and_oversized_requests() {
    let server = TestServer::start(Backend::Memory).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = raw_call(&channel, RPCS[2], field1(&[0xff, 0xfe, 0xfd]))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status), Reason::InvalidRequest);
    assert!(
        status.message().contains("protobuf"),
        "{}",
        status.message()
    );

    // A 20 KiB signature fits in a request but not in the parser's limit.
    let mut client = server.client().await;
    let long = ConsumeSignatureRequest {
        signature: "A".repeat(20 * 1024),
        ..Default::default()
    };
    assert_eq!(
        refused(client.consume_signature(long).await),
        Reason::SignatureMalformed
    );
    // A request over the 64 KiB cap is refused before it is decoded, typed like every refusal
    // (just over the cap, and far over it).
    for len in [64 * 1024 + 1, 1 << 20] {
        let huge = ConsumeSignatureRequest {
            signature: "A".repeat(len),
            ..Default::default()
        };
        let status = client.consume_signature(huge).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(reason_of(&status), Reason::InvalidRequest, "{status:?}");
        assert!(
            status.message().starts_with("INVALID_REQUEST: "),
            "{status:?}"
        );
        assert!(status.message().contains("64 KiB"), "{status:?}");
    }
    let huge_subject = IssueSignatureRequest {
        subject: "s".repeat(1 << 20),
        ..Default::default()
    };
    assert_eq!(
        refused(client.issue_signature(huge_subject).await),
        Reason::InvalidRequest
    );
    // Still serving.
    let sig = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    client
        .consume_signature(ConsumeSignatureRequest {
            signature: sig,
            ..Default::default()
        })
        .await
        .unwrap();
    server.wait_serving(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_signatures_are_never_accepted() {
    let server = TestServer::start(Backend::Redis).await;
    let mut client = server.client().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut rng = XorShift(0x0bad_cafe_f00d_0002);
    let mut by_reason = std::collections::BTreeMap::new();
    for round in 0..40 {
        let policy = vod_signer::proto::UploadPolicy {
            procedure: "QCVB_SimpleProcessFile".into(),
            source_context: format!("user-{round}"),
            max_file_size: Some(1000),
            ..Default::default()
        };
        let req = IssueSignatureRequest {
            policy: Some(policy),
            ..Default::default()
        };
        let sig = client
            .issue_signature(req)
            .await
            .unwrap()
            .into_inner()
            .signature;
        let raw = b64.decode(&sig).unwrap();
        for _ in 0..50 {
            let mutated = match rng.below(5) {
                0 => {
                    let mut s = sig.clone().into_bytes();
                    let i = rng.below(s.len());
                    s[i] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
                        [rng.below(65)];
                    String::from_utf8(s).unwrap()
                }
                1 => sig[..rng.below(sig.len())].to_owned(),
                2 => {
                    let mut r = raw.clone();
                    let i = rng.below(r.len());
                    r[i] ^= 1 << rng.below(8);
                    b64.encode(r)
                }
                3 => {
                    let mut r = raw.clone();
                    r.extend_from_slice(b"&maxFileSize=99999999999");
                    b64.encode(r)
                }
                _ => {
                    let mut r = raw.clone();
                    let cut = 20 + rng.below(r.len() - 20);
                    r.truncate(cut);
                    b64.encode(r)
                }
            };
            if mutated == sig {
                continue;
            }
            let req = ConsumeSignatureRequest {
                signature: mutated.clone(),
                file_size: Some(10),
                ..Default::default()
            };
            match client.consume_signature(req).await {
                Ok(_) => panic!("mutated signature accepted: {mutated}"),
                Err(status) => *by_reason.entry(reason_of(&status).as_str()).or_insert(0) += 1,
            }
        }
        // The original is untouched by all of that.
        let req = ConsumeSignatureRequest {
            signature: sig,
            file_size: Some(10),
            ..Default::default()
        };
        client.consume_signature(req).await.unwrap();
    }
    assert!(
        by_reason.contains_key("SIGNATURE_MALFORMED")
            && by_reason.contains_key("SIGNATURE_MISMATCH"),
        "{by_reason:?}"
    );
    server.wait_serving(Duration::from_secs(1)).await;
}
