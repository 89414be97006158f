//! Pushing queued notifications to `--notify-url`: at least once, by one replica at a time.
//!
//! Each replica runs one pusher, a consumer of the outbox under its own name. It takes new
//! notifications, POSTs each one signed (Standard Webhooks headers, a fresh timestamp and
//! signature per attempt, the same `webhook-id`), and confirms it on a 2xx. A failed attempt
//! (an error status, a reset, no answer within `--notify-timeout`) is tried again after an
//! exponential backoff with jitter; one still undelivered `--notify-max-age` after it was
//! queued goes to the dead letters. Attempts run concurrently (`--notify-concurrency`), so a
//! receiver that never answers costs attempts, never the queue.
//!
//! A replica that dies leaves its notifications pending under its name; after
//! [`STEAL_AFTER`] without a sign of life (the pusher renews what it holds every
//! [`KEEP_EVERY`]) another replica's pusher claims and delivers them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngExt as _;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{LifecycleObserver, Outcome, PushTarget};
use crate::report::Chain;
use crate::store::{Handle, Outbox, Queued};

/// A held notification untouched this long is another pusher's to take.
pub const STEAL_AFTER: Duration = Duration::from_secs(30);
/// How often a pusher renews the notifications it holds (well within [`STEAL_AFTER`]).
pub const KEEP_EVERY: Duration = Duration::from_secs(10);
/// How often a pusher looks for notifications a dead replica left.
const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// How often an idle pusher looks for new notifications.
const POLL: Duration = Duration::from_millis(50);
/// The first retry's delay; each failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay between two attempts of one notification.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most of a response body read (and dropped) so the connection can be reused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How often failing attempts are summed up in the log (each one is at debug).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The HTTP client of the pushes: HTTP/1.1, plaintext or TLS (the system's roots), with
/// connections kept alive for the next attempt.
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The system's CA certificates could not be loaded, so no https:// receiver can be trusted.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the system's CA certificates")]
struct NoRoots(#[source] std::io::Error);

fn http_client(target: &PushTarget) -> Result<HttpClient, NoRoots> {
    // Headers and body leave in separate writes: with Nagle on, the body waits for the
    // receiver's delayed ACK (40 ms a push), which caps a drain at concurrency / 40 ms.
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(NoRoots)?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(target.concurrency)
        .build(https))
}

/// A notification this pusher holds: waiting for its next attempt, or being attempted.
struct Held {
    queued: Queued,
    /// Attempts so far.
    attempts: u32,
    /// When the next attempt is due.
    next_at: Instant,
    /// Being attempted now.
    in_flight: bool,
}

/// Why an attempt failed, for the log.
#[derive(Debug)]
enum Failed {
    Status(hyper::StatusCode),
    Error(String),
    NoAnswer,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Status(s) => write!(f, "answered {s}"),
            Failed::Error(e) => write!(f, "{e}"),
            Failed::NoAnswer => write!(f, "no answer in time"),
        }
    }
}

/// One POST of `queued` to the target, signed now.
async fn attempt(
    client: HttpClient,
    target: Arc<PushTarget>,
    queued: Queued,
) -> Result<(), Failed> {
    let timestamp = crate::clock::unix_now();
    let signature = target
        .secrets
        .sign(&queued.webhook_id, timestamp, queued.body.as_bytes());
    let request = hyper::Request::post(target.url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("vod-signer/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &queued.webhook_id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(queued.body)))
        .map_err(|e| Failed::Error(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| Failed::Error(e.to_string()))?;
        let status = response.status();
        // Read (and drop) the answer, so the connection can carry the next attempt.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Failed::Status(status))
        }
    };
    tokio::time::timeout(target.attempt_timeout, exchange)
        .await
        .unwrap_or(Err(Failed::NoAnswer))
}

/// The delay before attempt `attempts + 1`: exponential, capped, with full jitter in its
/// upper half so a receiver coming back is not hit by every retry at once.
fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    let delay = FIRST_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF);
    delay.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Pushes queued notifications until `stop` resolves; attempts in flight then finish (each
/// bounded by its timeout), and what is still held is left for another replica.
pub async fn run<S: Outbox>(
    store: Arc<S>,
    target: Arc<PushTarget>,
    max_age: Duration,
    consumer: String,
    observer: Arc<dyn LifecycleObserver>,
    stop: impl std::future::Future<Output = ()>,
) {
    let client = match http_client(&target) {
        Ok(client) => client,
        Err(e) => {
            warn!("cannot push notifications: {}", Chain(&e));
            return;
        }
    };
    info!(url = %target.url, consumer = %consumer, "pushing upload notifications");
    // Ordered by handle (queue order), so the oldest due are found by a scan, not a sort.
    let mut held: BTreeMap<Handle, Held> = BTreeMap::new();
    let mut attempts: JoinSet<(Handle, Result<(), Failed>)> = JoinSet::new();
    let mut delivered: Vec<Handle> = Vec::new();
    let mut last_claim = Instant::now() - CLAIM_EVERY;
    let mut last_keep = Instant::now();
    let mut failures = FailureLog::default();
    let hold_at_most = target.concurrency.saturating_mul(4).max(1);
    tokio::pin!(stop);
    loop {
        let now = Instant::now();
        // New notifications, and those a dead replica left.
        let room = hold_at_most.saturating_sub(held.len());
        let mut taken = Vec::new();
        if room > 0 {
            match store.read_new(&consumer, room).await {
                Ok(new) => taken.extend(new),
                Err(e) => failures.store(&e.to_string()),
            }
            if now.duration_since(last_claim) >= CLAIM_EVERY && taken.len() < room {
                last_claim = now;
                match store
                    .claim_stale(&consumer, STEAL_AFTER, room - taken.len())
                    .await
                {
                    Ok(stale) => taken.extend(stale),
                    Err(e) => failures.store(&e.to_string()),
                }
            }
        }
        let busy = !taken.is_empty();
        for queued in taken {
            held.entry(queued.handle.clone()).or_insert(Held {
                queued,
                attempts: 0,
                next_at: now,
                in_flight: false,
            });
        }
        if now.duration_since(last_keep) >= KEEP_EVERY && !held.is_empty() {
            last_keep = now;
            let handles: Vec<Handle> = held.keys().cloned().collect();
            if let Err(e) = store.keep(&consumer, &handles).await {
                failures.store(&e.to_string());
            }
        }
        // Start what is due, oldest first, up to the concurrency.
        let now_ms = crate::clock::unix_now_ms();
        let mut expired = Vec::new();
        for h in held.values_mut() {
            if attempts.len() >= target.concurrency {
                break;
            }
            if h.in_flight || h.next_at > now {
                continue;
            }
            if now_ms.saturating_sub(h.queued.handle.queued_at_ms()) >= max_age.as_millis() as i64 {
                expired.push(h.queued.clone());
                continue;
            }
            h.in_flight = true;
            h.attempts += 1;
            let handle = h.queued.handle.clone();
            let job = attempt(client.clone(), target.clone(), h.queued.clone());
            attempts.spawn(async move { (handle, job.await) });
        }
        for queued in expired {
            held.remove(&queued.handle);
            let why = format!(
                "not delivered within --notify-max-age ({} s)",
                max_age.as_secs()
            );
            match store
                .dead_letter(&queued, &why, crate::clock::unix_now())
                .await
            {
                Ok(true) => {
                    observer.notifications(Outcome::DeadLettered, 1);
                    warn!(webhook_id = %queued.webhook_id, record = %queued.record, "notification dead-lettered: {why}");
                }
                Ok(false) => {}
                Err(e) => failures.store(&e.to_string()),
            }
        }
        // Wait for an attempt to end, the next due retry, a poll, or the stop.
        // At the concurrency, a due retry cannot start before an attempt ends (which wakes
        // this loop): waking for it would spin.
        let next_retry = if attempts.len() >= target.concurrency {
            None
        } else {
            held.values()
                .filter(|h| !h.in_flight)
                .map(|h| h.next_at)
                .min()
        };
        let wake = if busy {
            Instant::now()
        } else {
            next_retry.map_or(now + POLL, |at| at.min(now + POLL))
        };
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                let mut finished = vec![done];
                while let Some(more) = attempts.try_join_next() {
                    finished.push(more);
                }
                for result in finished {
                    let Ok((handle, result)) = result else { continue };
                    let Some(h) = held.get_mut(&handle) else { continue };
                    match result {
                        Ok(()) => {
                            held.remove(&handle);
                            delivered.push(handle);
                        }
                        Err(e) => {
                            debug!(webhook_id = %h.queued.webhook_id, attempt = h.attempts, "notification push failed: {e}");
                            failures.attempt(&target.url, &e);
                            observer.notifications(Outcome::Retried, 1);
                            h.in_flight = false;
                            h.next_at = Instant::now() + backoff(h.attempts);
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        if !delivered.is_empty() {
            match store.confirm(&delivered).await {
                Ok(_) => {
                    observer.notifications(Outcome::Delivered, delivered.len() as u64);
                    delivered.clear();
                }
                // Kept for the next round; if this replica dies first, another delivers
                // them again (at least once).
                Err(e) => failures.store(&e.to_string()),
            }
        }
    }
    // Stopping: the attempts in flight finish (each bounded by its timeout).
    while let Some(done) = attempts.join_next().await {
        if let Ok((handle, Ok(()))) = done {
            delivered.push(handle);
        }
    }
    if !delivered.is_empty() && store.confirm(&delivered).await.is_ok() {
        observer.notifications(Outcome::Delivered, delivered.len() as u64);
    }
    info!(consumer = %consumer, "stopped pushing notifications");
}

/// Failures summed up in the log at most every [`FAILURE_LOG_EVERY`], rather than a line
/// per failed attempt.
#[derive(Default)]
struct FailureLog {
    since: Option<Instant>,
    attempts: u64,
    store: u64,
    last: String,
}

impl FailureLog {
    fn attempt(&mut self, url: &hyper::Uri, failed: &Failed) {
        self.attempts += 1;
        self.last = format!("{url}: {failed}");
        self.flush();
    }

    fn store(&mut self, error: &str) {
        self.store += 1;
        self.last = error.to_owned();
        self.flush();
    }

    fn flush(&mut self) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if self.attempts + self.store == 1 || now.duration_since(since) >= FAILURE_LOG_EVERY {
            warn!(
                failed_attempts = self.attempts,
                store_errors = self.store,
                last = %self.last,
                "pushing notifications: failures (retried with backoff)"
            );
            if self.attempts + self.store > 1 {
                *self = FailureLog {
                    since: Some(now),
                    ..FailureLog::default()
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        for attempts in 1..40 {
            let d = backoff(attempts);
            let full = FIRST_BACKOFF
                .saturating_mul(1 << attempts.saturating_sub(1).min(16))
                .min(MAX_BACKOFF);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?} vs {full:?}");
        }
    }
}
