//! A steady load of issue, consume, replay and revoke from a client host, through the crate's
//! typed client, every attempt recorded in a history.
//!
//! Each worker loops: issue on its replica; then, for most signatures, the owner consumes on
//! that replica with its own idempotency key (retrying with that key while the answer is
//! unknown or transient), and once it succeeded a replay with another key goes to the next
//! replica (retried the same way until it has a definite answer); every `revoke_every`-th
//! signature is revoked instead and then presented once; every `late_every`-th is presented
//! only `late_by` after its issue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use vod_signer::client::{Client, ClientConfig, ClientError};
use vod_signer::proto::{IssueSignatureRequest, SignatureState};

use super::Host;
use crate::history::{Call, OK, Rpc};

/// Replays and late presentations in flight per worker.
const BACKGROUND_PER_WORKER: usize = 8;

/// What a client host does.
#[derive(Clone, Debug)]
pub struct Load {
    /// The client's name in the history.
    pub client: String,
    /// The replicas it talks to: (name, endpoint).
    pub replicas: Vec<(String, String)>,
    /// Concurrent workers.
    pub workers: usize,
    /// The scenario's start (history times are relative to it).
    pub t0: Instant,
    /// No new signature after this.
    pub stop_issuing: Instant,
    /// Owners and replays stop retrying after this.
    pub give_up: Instant,
    /// Deadline of each attempt.
    pub call_timeout: Duration,
    /// Every n-th signature is revoked instead of consumed (0: never).
    pub revoke_every: usize,
    /// A worker's pause between two signatures (keeps the load steady, not flat out).
    pub pause: Duration,
    /// Every n-th signature is presented `late_by` after its issue, in the background (0:
    /// never), so signatures issued before a fault are consumed during it.
    pub late_every: usize,
    pub late_by: Duration,
}

fn result_of<T>(r: &Result<T, ClientError>) -> String {
    match r {
        Ok(_) => OK.to_owned(),
        Err(ClientError::Refused { reason, .. }) => reason.as_str().to_owned(),
        Err(ClientError::Failed { code, .. }) => format!("{code:?}"),
    }
}

struct Recorder<'a> {
    load: &'a Load,
    calls: Vec<Call>,
}

impl Recorder<'_> {
    fn ms(&self, at: Instant) -> f64 {
        (at - self.load.t0).as_secs_f64() * 1000.0
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        replica: usize,
        rpc: Rpc,
        sig: &str,
        key: &str,
        start: Instant,
        result: String,
    ) {
        let end = Instant::now();
        self.calls.push(Call {
            client: self.load.client.clone(),
            replica: self.load.replicas[replica].0.clone(),
            rpc,
            sig: sig.to_owned(),
            key: key.to_owned(),
            start_ms: self.ms(start),
            end_ms: self.ms(end),
            result,
        });
    }
}

/// Sleeps a jittered backoff step and doubles it (25 ms to 400 ms).
async fn back_off(step: &mut Duration) {
    let jitter = rand::random_range(0..=step.as_millis() as u64);
    tokio::time::sleep(*step / 2 + Duration::from_millis(jitter / 2)).await;
    *step = (*step * 2).min(Duration::from_millis(400));
}

async fn worker(load: Load, clients: Vec<Client>, w: usize) -> (Vec<Call>, Vec<(String, String)>) {
    let mut rec = Recorder {
        load: &load,
        calls: Vec::new(),
    };
    let (mine, other) = (w % clients.len(), (w + 1) % clients.len());
    let mut n = 0;
    let mut background = Vec::new();
    // Background flows (replays, late presentations) a worker may have at once: without a
    // bound, replays retrying against a replica that does not answer pile up by the
    // thousand and keep it overloaded after the fault healed (a retry storm of the test's own
    // making).
    let slots = Arc::new(Semaphore::new(BACKGROUND_PER_WORKER));
    let mut issued_sigs = Vec::new();
    while Instant::now() < load.stop_issuing {
        n += 1;
        let start = Instant::now();
        let issued = clients[mine]
            .issue(IssueSignatureRequest {
                subject: format!("{}-{w}", load.client),
                ..Default::default()
            })
            .await;
        let sig_id = issued
            .as_ref()
            .ok()
            .and_then(|r| r.claims.as_ref())
            .map(|c| format!("{}:{}", c.secret_id, c.random))
            .unwrap_or_default();
        rec.record(mine, Rpc::Issue, &sig_id, "", start, result_of(&issued));
        let Ok(issued) = issued else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let sig = issued.signature;
        issued_sigs.push((sig_id.clone(), sig.clone()));
        if load.revoke_every > 0 && n % load.revoke_every == 0 {
            let mut step = Duration::from_millis(25);
            loop {
                let start = Instant::now();
                let r = clients[mine].revoke(&sig).await;
                rec.record(mine, Rpc::Revoke, &sig_id, "", start, result_of(&r));
                match r {
                    Ok(_) => {
                        let key = format!("{}-{w}-{n}-after-revoke", load.client);
                        let start = Instant::now();
                        let r = clients[other].consume(&sig, None, Some(&key)).await;
                        rec.record(other, Rpc::Consume, &sig_id, &key, start, result_of(&r));
                        break;
                    }
                    Err(e) if e.is_retryable() && Instant::now() < load.give_up => {
                        back_off(&mut step).await
                    }
                    Err(_) => break,
                }
            }
            continue;
        }
        let owner = format!("{}-{w}-{n}", load.client);
        let replay = format!("{}-{w}-{n}-replay", load.client);
        let (load2, a, b) = (load.clone(), clients[mine].clone(), clients[other].clone());
        let ends = (mine, other);
        let late = load.late_every > 0 && n % load.late_every == 0;
        if let Some(slot) = late
            .then(|| slots.clone().try_acquire_owned().ok())
            .flatten()
        {
            // Presented later (a user uploading a while after asking), in the background.
            background.push(tokio::spawn(async move {
                let _slot = slot;
                tokio::time::sleep(load2.late_by).await;
                let (ok, mut calls) =
                    owner_consume(&load2, &a, ends.0, &sig, &sig_id, &owner).await;
                if ok {
                    calls.extend(replay_consume(&load2, &b, ends.1, &sig, &sig_id, &replay).await);
                }
                calls
            }));
        } else {
            let (ok, calls) = owner_consume(&load, &a, mine, &sig, &sig_id, &owner).await;
            rec.calls.extend(calls);
            // The replay runs on by itself (until it has a definite answer), so a replica that
            // does not answer holds up only the calls sent to it; skipped while the worker has
            // too many in flight.
            if let Some(slot) = ok.then(|| slots.clone().try_acquire_owned().ok()).flatten() {
                background.push(tokio::spawn(async move {
                    let _slot = slot;
                    replay_consume(&load2, &b, ends.1, &sig, &sig_id, &replay).await
                }));
            }
        }
        tokio::time::sleep(load.pause).await;
    }
    for task in background {
        rec.calls.extend(task.await.unwrap());
    }
    (rec.calls, issued_sigs)
}

/// The owner's consume with its key, retried while the outcome is unknown or transient:
/// whether it succeeded, and the attempts.
async fn owner_consume(
    load: &Load,
    client: &Client,
    replica: usize,
    sig: &str,
    sig_id: &str,
    key: &str,
) -> (bool, Vec<Call>) {
    let mut rec = Recorder {
        load,
        calls: Vec::new(),
    };
    let mut step = Duration::from_millis(25);
    loop {
        let start = Instant::now();
        let r = client.consume(sig, None, Some(key)).await;
        rec.record(replica, Rpc::Consume, sig_id, key, start, result_of(&r));
        match r {
            Ok(_) => return (true, rec.calls),
            Err(e) if e.is_retryable() && Instant::now() < load.give_up => {
                back_off(&mut step).await
            }
            Err(_) => return (false, rec.calls),
        }
    }
}

/// A replay with another key, retried until it has a definite answer.
async fn replay_consume(
    load: &Load,
    client: &Client,
    replica: usize,
    sig: &str,
    sig_id: &str,
    key: &str,
) -> Vec<Call> {
    let mut rec = Recorder {
        load,
        calls: Vec::new(),
    };
    let mut step = Duration::from_millis(25);
    loop {
        let start = Instant::now();
        let r = client.consume(sig, None, Some(key)).await;
        rec.record(replica, Rpc::Replay, sig_id, key, start, result_of(&r));
        match r {
            Err(e) if e.is_retryable() && Instant::now() < load.give_up => {
                back_off(&mut step).await
            }
            _ => return rec.calls,
        }
    }
}

/// After the load: the state of every signature that was issued, as every replica reports it
/// (`VerifySignature`, retried while the answer is unknown), recorded as [`Rpc::Verify`] calls
/// whose result is the state (`CONSUMED`, `NOT_ISSUED`, ...). A record that was acknowledged
/// and then lost shows up here.
async fn audit(load: &Load, clients: &[Client], sigs: &[(String, String)]) -> Vec<Call> {
    let mut rec = Recorder {
        load,
        calls: Vec::new(),
    };
    let give_up = Instant::now() + Duration::from_secs(20);
    for (sig_id, sig) in sigs {
        for (i, client) in clients.iter().enumerate() {
            let mut step = Duration::from_millis(25);
            loop {
                let start = Instant::now();
                let r = client.verify(sig).await;
                let result = match &r {
                    Ok(v) => SignatureState::try_from(v.state)
                        .map_or("UNKNOWN_STATE".to_owned(), |s| s.as_str_name().to_owned()),
                    Err(_) => result_of(&r),
                };
                rec.record(i, Rpc::Verify, sig_id, "", start, result);
                match r {
                    Err(e) if e.is_retryable() && Instant::now() < give_up => {
                        back_off(&mut step).await
                    }
                    _ => break,
                }
            }
        }
    }
    rec.calls
}

/// Runs `load` from `host` (its own namespace) on a thread; joins to the history.
pub fn drive(host: &Host, load: Load) -> std::thread::JoinHandle<Vec<Call>> {
    let host2 = host.clone();
    host.spawn(move || {
        host2.block_on_here(async move {
            let clients: Vec<Client> = load
                .replicas
                .iter()
                .map(|(_, endpoint)| {
                    Client::connect(ClientConfig {
                        timeout: load.call_timeout,
                        attempts: 1,
                        ..ClientConfig::new(endpoint.clone())
                    })
                    .unwrap()
                })
                .collect();
            let tasks: Vec<_> = (0..load.workers)
                .map(|w| tokio::spawn(worker(load.clone(), clients.clone(), w)))
                .collect();
            let mut calls = Vec::new();
            let mut sigs = Vec::new();
            for t in tasks {
                let (c, s) = t.await.unwrap();
                calls.extend(c);
                sigs.extend(s);
            }
            calls.extend(audit(&load, &clients, &sigs).await);
            calls
        })
    })
}

impl Host {
    /// Runs `f` on a current-thread runtime on this thread (already inside the namespace).
    fn block_on_here<T>(&self, f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}
