//! vod-signer: issues and redeems single-use Tencent Cloud VOD upload signatures over gRPC.
//!
//! Module map (each layer only uses the ones above it):
//!
//! - [`reason`]: the refusal reasons of the contract (SPEC section 3), shared by all layers.
//! - [`signature`]: the codec: sign, parse, verify, clock checks. Knows no gRPC, no store.
//! - [`digest`]: hex and short SHA-256 fingerprints, shared by records, quotas and callers.
//! - [`keys`]: the SecretKeys, loaded from a keys directory; which one issues.
//! - [`auth`]: the caller policy: which caller (token or certificate SAN) may call which RPC.
//! - [`events`]: audit and upload events: the [`events::EventLog`] interface, the log-backed
//!   one of the in-memory store (Redis Streams live in [`store`]).
//! - [`quota`]: issuance quotas per subject and per SecretId (GCRA arithmetic, keys).
//! - [`store`]: the replay guard's records: the [`store::Store`] interface, Redis and
//!   in-memory implementations. Knows no gRPC.
//! - [`proto`]: the generated gRPC types of `proto/vodsigner/v1/signer.proto`.
//! - [`service`]: the `SignatureService` RPCs: wires codec, keys and store, maps refusals
//!   onto gRPC statuses.
//! - [`metrics`]: Prometheus metrics, the instrumented store wrapper, the `/metrics` endpoint.
//! - [`wire`]: the protobuf codec of the service, refusing undecodable requests with a type.
//! - [`tls`]: TLS and mTLS on the gRPC port, reloading certificate files as they rotate.
//! - [`server`]: runs the gRPC server: health, reflection, store health checks, shutdown.
//! - [`client`]: a typed client (TLS, tokens, deadlines, safe retries) for Rust callers.
//! - [`config`]: the command line and its `VOD_SIGNER_*` environment variables.
//! - [`cli`]: the offline subcommands (`issue`, `inspect`).

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod digest;
pub mod events;
pub mod keys;
pub mod metrics;
pub mod proto;
pub mod quota;
pub mod reason;
pub mod server;
pub mod service;
pub mod signature;
pub mod store;
pub mod tls;
pub mod wire;
