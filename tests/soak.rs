//! Soak and chaos: two `vod-signer serve` processes on one Redis, many clients issuing,
//! consuming, replaying, forging and revoking, while Redis is killed and restarted (with its
//! data, and once wiped). A ledger then checks the one promise: no signature accepted twice,
//! nothing forged, revoked or replayed ever accepted.
//!
//! Not part of the quick suite. Run it with:
//!
//! ```sh
//! SOAK_SECONDS=60 cargo test --release --test soak -- --ignored --nocapture
//! ```

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tonic::transport::Channel;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{IssueSignatureRequest, RevokeSignatureRequest, SignatureState};
use vod_signer::reason::Reason;

#[derive(Default)]
struct Ledger {
    /// Per signature, the idempotency keys whose consume succeeded.
    accepted: Mutex<HashMap<String, HashSet<String>>>,
    issued: AtomicU64,
    consumed: AtomicU64,
    replays_refused: AtomicU64,
    forgeries_refused: AtomicU64,
    revoked_refused: AtomicU64,
    unavailable: AtomicU64,
    not_issued_after_wipe: AtomicU64,
    /// Acceptances that break the promise (must stay 0).
    violations: Mutex<Vec<String>>,
}

impl Ledger {
    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Consumes with one idempotency key, retrying while the store is unavailable.
async fn consume_retrying(
    client: &mut SignatureServiceClient<Channel>,
    sig: &str,
    key: &str,
    ledger: &Ledger,
) -> Result<i64, Reason> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.consume_signature(consume_with(sig, key)).await {
            Ok(r) => return Ok(r.into_inner().consumed_at),
            Err(s) => {
                let reason = reason_of(&s);
                if reason != Reason::StoreUnavailable || Instant::now() > deadline {
                    return Err(reason);
                }
                ledger.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn client_loop(
    id: usize,
    replicas: [SignatureServiceClient<Channel>; 2],
    ledger: Arc<Ledger>,
    until: Instant,
) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let [mut a, mut b] = replicas.clone();
        if !n.is_multiple_of(2) {
            std::mem::swap(&mut a, &mut b);
        }
        let sig = match a.issue_signature(IssueSignatureRequest::default()).await {
            Ok(r) => r.into_inner().signature,
            Err(s) => {
                assert_eq!(
                    reason_of(&s),
                    Reason::StoreUnavailable,
                    "issue refused: {s:?}"
                );
                ledger.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ledger.issued.fetch_add(1, Ordering::Relaxed);

        if n.is_multiple_of(5) {
            // Revoke first: once a revoke has answered ISSUED, nothing may consume it.
            if let Ok(r) = b
                .revoke_signature(RevokeSignatureRequest {
                    signature: sig.clone(),
                })
                .await
                && r.into_inner().previous_state == SignatureState::Issued as i32
            {
                match consume_retrying(&mut a, &sig, "after-revoke", &ledger).await {
                    Ok(_) => ledger.violation(format!("revoked signature accepted: client {id}")),
                    Err(_) => {
                        ledger.revoked_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            continue;
        }

        // The owner consumes on one replica; a replay races it on the other.
        let owner_key = format!("owner-{id}-{n}");
        let replay_key = format!("replay-{id}-{n}");
        let (owner, replay) = tokio::join!(
            consume_retrying(&mut a, &sig, &owner_key, &ledger),
            consume_retrying(&mut b, &sig, &replay_key, &ledger)
        );
        for (key, outcome) in [(&owner_key, owner), (&replay_key, replay)] {
            match outcome {
                Ok(_) => {
                    let mut accepted = ledger.accepted.lock().unwrap();
                    let keys = accepted.entry(sig.clone()).or_default();
                    keys.insert(key.clone());
                    if keys.len() > 1 {
                        ledger.violation(format!("accepted twice, by {keys:?}"));
                    }
                }
                Err(Reason::SignatureAlreadyUsed) => {
                    ledger.replays_refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(Reason::SignatureNotIssued) => {
                    ledger.not_issued_after_wipe.fetch_add(1, Ordering::Relaxed);
                }
                Err(other) => panic!("unexpected refusal {other}"),
            }
        }
        if ledger.accepted.lock().unwrap().contains_key(&sig) {
            ledger.consumed.fetch_add(1, Ordering::Relaxed);
            // A later replay with the owner's key must not count as a new use either.
            if let Ok(_at) = consume_retrying(&mut b, &sig, "late-replay", &ledger).await {
                ledger.violation(format!("late replay accepted: client {id}"));
            }
        }

        // A forgery: the real SecretId, a guessed key.
        let forged = forge(
            SECRET_ID,
            "guessed",
            now(),
            now() + 600,
            n as u32,
            &Default::default(),
        );
        match a.consume_signature(consume_with(&forged, "")).await {
            Ok(_) => ledger.violation("forged signature accepted".into()),
            Err(s) => {
                if reason_of(&s) == Reason::SignatureMismatch {
                    ledger.forgeries_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: run with --ignored (see the module docs)"]
async fn soak_with_redis_restarts() {
    let seconds = env_u64("SOAK_SECONDS", 60);
    let clients = env_u64("SOAK_CLIENTS", 32) as usize;
    let mut redis = RedisServer::start_persistent();
    let keys = keys_dir();
    let url = redis.url();
    let a = ServerProcess::start(keys.path(), &["--redis-url", &url]);
    let b = ServerProcess::start(keys.path(), &["--redis-url", &url]);
    let replicas = [connect(a.addr).await, connect(b.addr).await];
    let ledger = Arc::new(Ledger::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);

    let mut tasks = Vec::new();
    for id in 0..clients {
        tasks.push(tokio::spawn(client_loop(
            id,
            replicas.clone(),
            ledger.clone(),
            until,
        )));
    }

    // Chaos: kill Redis a few times (data kept: AOF with fsync always), and wipe it once.
    let mut recoveries = Vec::new();
    let events = 4;
    for event in 0..events {
        tokio::time::sleep(Duration::from_secs(seconds) / (events + 1)).await;
        let wipe = event == events - 1;
        let t0 = Instant::now();
        if wipe {
            redis.restart_empty();
        } else {
            redis.kill_and_restart();
        }
        wait_health(a.addr, "", true, Duration::from_secs(20)).await;
        wait_health(b.addr, "", true, Duration::from_secs(20)).await;
        recoveries.push((
            if wipe { "wiped" } else { "killed, data kept" },
            t0.elapsed(),
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let l = &ledger;
    println!(
        "soak: {seconds} s, {clients} clients, 2 replicas, {} Redis outages",
        recoveries.len()
    );
    println!(
        "  issued:                  {}",
        l.issued.load(Ordering::Relaxed)
    );
    println!(
        "  consumed (once each):    {}",
        l.consumed.load(Ordering::Relaxed)
    );
    println!(
        "  replays refused:         {}",
        l.replays_refused.load(Ordering::Relaxed)
    );
    println!(
        "  forgeries refused:       {}",
        l.forgeries_refused.load(Ordering::Relaxed)
    );
    println!(
        "  revoked, then refused:   {}",
        l.revoked_refused.load(Ordering::Relaxed)
    );
    println!(
        "  STORE_UNAVAILABLE seen:  {}",
        l.unavailable.load(Ordering::Relaxed)
    );
    println!(
        "  NOT_ISSUED (wiped data): {}",
        l.not_issued_after_wipe.load(Ordering::Relaxed)
    );
    for (what, took) in &recoveries {
        println!("  outage ({what}): both replicas SERVING again after {took:?}");
    }
    let violations = l.violations.lock().unwrap();
    println!(
        "  accepted twice / forged / revoked accepted: {}",
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:?}");
    assert!(l.consumed.load(Ordering::Relaxed) > 0);
}
