//! vod-signer: issues and redeems single-use Tencent Cloud VOD upload signatures over gRPC.
//!
//! Module map, in layers: each module uses only modules of the layers above it (a test,
//! `tests/architecture.rs`, fails on an import cycle or an upward import).
//!
//! 1. Foundations: [`reason`] (the refusal reasons of SPEC section 3), [`refusal`] (a refused
//!    call and how it travels as a gRPC status), [`rpc`] (the service's RPCs, as one enum),
//!    [`digest`] (hex and SHA-256 fingerprints), [`clock`] (the injected time), [`fold`] (a
//!    repeated log line folded to one a second), [`report`] (an error told with its causes),
//!    [`shutdown`] (the signal every background task obeys, and the wait for them all).
//! 2. The codec: [`signature`]: sign, parse, verify, clock checks, URL encoding. Pure.
//! 3. What the service holds: [`keys`] (the SecretKeys, reloadable), [`auth`] (the caller
//!    policy), [`quota`] (GCRA arithmetic of the issuance quotas).
//! 4. Redis: [`redis`]: URLs of the three deployments, a connection that heals itself, Sentinel
//!    following. Knows nothing of signatures.
//! 5. Persistence: [`store`] (the replay guard's records: the [`store::Store`] interface, Redis
//!    and in-memory; the uploads awaiting completion and the notification outbox),
//!    [`audit`] (the event log: log lines or a Redis stream), [`notify`] (upload
//!    notifications: their body, Standard Webhooks signatures, the push to `--notify-url`).
//! 6. [`service`]: the use cases (issue, verify, consume, revoke, watch; a subject's signatures:
//!    list, revoke all, the outstanding cap). Knows no gRPC.
//! 7. [`metrics`]: Prometheus metrics, the measured store, the `/metrics` endpoint.
//! 8. The wire: [`proto`] (the generated gRPC types and their codec), [`api`] (the gRPC
//!    service over the use cases, and the per-call tower layers).
//! 9. Serving: [`tls`] (TLS and mTLS with reloading certificates), [`server`] (transport,
//!    health, reflection, drain), [`reload`] (keys and policy on SIGHUP and a timer).
//! 10. Edges: [`config`] (the command line), [`telemetry`] (logs), [`runner`] (the
//!     composition root of `serve`), [`cli`] (the offline `issue` and `inspect`), [`client`]
//!     (a typed client for Rust callers).

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod digest;
pub mod fold;
pub mod keys;
pub mod metrics;
pub mod notify;
pub mod proto;
pub mod quota;
pub mod reason;
pub mod redis;
pub mod refusal;
pub mod reload;
pub mod report;
pub mod rpc;
pub mod runner;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod signature;
pub mod store;
pub mod telemetry;
pub mod tls;
