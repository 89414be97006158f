//! Benchmark fixture, not part of the product: the floor of vod-signer's own stack.
//!
//! The least a tonic 0.14 + redis-rs service must do to answer the same RPCs: IssueSignature
//! signs the request's policy and does one `SET NX EX` of a record of the same size;
//! ConsumeSignature parses and verifies the signature and runs the same consume script
//! (`EVALSHA`). No caller check, no
//! admission, no metrics, no logs, no events, no replicas. Same runtime flavour
//! (current-thread) and allocator (mimalloc) as `vod-signer serve` on this machine, so what
//! `cargo run --release --example loadgen -- --floor` measures between the two is vod-signer's own per-call cost.
//!
//! ```sh
//! cargo run --release --example floor -- 127.0.0.1:50061 redis://127.0.0.1:6379/0 KEYFILE
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use tonic::{Request, Response, Status};
use vod_signer::proto;
use vod_signer::proto::signature_service_server::{SignatureService, SignatureServiceServer};
use vod_signer::service::MAX_NONCE_TRIES;
use vod_signer::signature::{self, SecretKey, SignRequest, UploadPolicy};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// vod-signer's consume script, as its store runs it.
const CONSUME_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)$')
if not state or fp ~= ARGV[1] then return {'missing'} end
if state == 'issued' then
  redis.call('SET', KEYS[1], 'v1|consumed|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'KEEPTTL')
  return {'ok', ARGV[2]}
end
if state == 'consumed' and ARGV[3] ~= '' and idem == ARGV[3] then return {'ok', changed} end
return {state, changed}
"#;

struct Floor {
    redis: MultiplexedConnection,
    secret_id: String,
    key: SecretKey,
    consume: redis::Script,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unavailable(e: redis::RedisError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl SignatureService for Floor {
    type WatchEventsStream = tokio_stream::Empty<Result<proto::Event, Status>>;

    async fn issue_signature(
        &self,
        request: Request<proto::IssueSignatureRequest>,
    ) -> Result<Response<proto::IssueSignatureResponse>, Status> {
        let req = request.into_inner();
        let ttl = if req.ttl_seconds == 0 {
            3600
        } else {
            req.ttl_seconds
        };
        let t = now();
        let policy: UploadPolicy = req.policy.unwrap_or_default().into();
        // A nonce already taken is tried again, as vod-signer does: handing out a signature
        // whose record belongs to another would fail its consume (and the benchmark's check).
        for _ in 0..MAX_NONCE_TRIES {
            let signed = signature::sign(
                &self.key,
                &SignRequest {
                    secret_id: &self.secret_id,
                    current_time_stamp: t,
                    expire_time: t + ttl as i64,
                    random: rand::random(),
                    one_time_valid: true,
                    policy: &policy,
                },
            );
            let record_key = format!("vodsigner:sig:{}:{}", self.secret_id, signed.claims.random);
            let fp = signature::fingerprint(&signed.tag);
            let record = format!("v1|issued|{fp}|{t}|{t}|");
            let set: Option<String> = redis::cmd("SET")
                .arg(record_key)
                .arg(record)
                .arg("NX")
                .arg("EX")
                .arg(ttl + 60)
                .query_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
            if set.is_some() {
                return Ok(Response::new(proto::IssueSignatureResponse {
                    signature: signed.signature,
                    claims: Some(signed.claims.into()),
                }));
            }
        }
        Err(Status::unavailable(format!(
            "no free nonce in {MAX_NONCE_TRIES} tries"
        )))
    }

    async fn consume_signature(
        &self,
        request: Request<proto::ConsumeSignatureRequest>,
    ) -> Result<Response<proto::ConsumeSignatureResponse>, Status> {
        let req = request.into_inner();
        let parsed = signature::parse(&req.signature)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        parsed
            .verify(&self.key)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let record_key = format!(
            "vodsigner:sig:{}:{}",
            parsed.claims.secret_id, parsed.claims.random
        );
        let reply: Vec<String> = self
            .consume
            .key(record_key)
            .arg(signature::fingerprint(&parsed.tag))
            .arg(now())
            .arg(vod_signer::store::idempotency_token(&req.idempotency_key))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(Response::new(proto::ConsumeSignatureResponse {
                claims: Some(parsed.claims.into()),
                consumed_at: reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            })),
            _ => Err(Status::failed_precondition("not consumed")),
        }
    }

    async fn verify_signature(
        &self,
        _: Request<proto::VerifySignatureRequest>,
    ) -> Result<Response<proto::VerifySignatureResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn revoke_signature(
        &self,
        _: Request<proto::RevokeSignatureRequest>,
    ) -> Result<Response<proto::RevokeSignatureResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn watch_events(
        &self,
        _: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn list_signatures(
        &self,
        _: Request<proto::ListSignaturesRequest>,
    ) -> Result<Response<proto::ListSignaturesResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn revoke_subject(
        &self,
        _: Request<proto::RevokeSubjectRequest>,
    ) -> Result<Response<proto::RevokeSubjectResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn complete_upload(
        &self,
        _: Request<proto::CompleteUploadRequest>,
    ) -> Result<Response<proto::CompleteUploadResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn pull_events(
        &self,
        _: Request<proto::PullEventsRequest>,
    ) -> Result<Response<proto::PullEventsResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn confirm_events(
        &self,
        _: Request<proto::ConfirmEventsRequest>,
    ) -> Result<Response<proto::ConfirmEventsResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, redis_url, key_file] = &args[..] else {
        return Err("usage: floor LISTEN REDIS_URL KEY_FILE (file name = SecretId)".into());
    };
    let key_path = std::path::Path::new(key_file);
    let secret_id = key_path.file_name().ok_or("no file name")?;
    let key = std::fs::read(key_path)?;
    let floor = Floor {
        redis: redis::Client::open(redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?,
        secret_id: secret_id.to_string_lossy().into_owned(),
        key: SecretKey::new(&key),
        consume: redis::Script::new(CONSUME_LUA),
    };
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    eprintln!("floor: serving on {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(SignatureServiceServer::new(floor))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
