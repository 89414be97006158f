//! Upload notifications: what vod-signer tells the app server when an upload completes or is
//! abandoned, shaped like Tencent VOD's own event ([`body`]), signed as Standard Webhooks
//! ([`webhook`]), and pushed to `--notify-url` with retries ([`push`]).
//!
//! The queue itself is the store's outbox (`crate::store::outbox`); the use cases queue into
//! it and hand it out to pulling callers. This module knows no gRPC.

pub mod body;
pub mod push;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

pub use self::webhook::{Secrets, SecretsError};

/// Where notifications go (`--notify-url`, `--notify-mode`): one of them, never both.
#[derive(Clone, Debug, Default)]
pub enum Delivery {
    /// Not queued at all (uploads still complete and are marked abandoned, with events).
    #[default]
    Off,
    /// POSTed to this URL.
    Push(Arc<PushTarget>),
    /// Kept for PullEvents and ConfirmEvents.
    Pull,
}

impl Delivery {
    /// Whether notifications are queued.
    pub fn is_on(&self) -> bool {
        !matches!(self, Delivery::Off)
    }
}

/// The receiver of pushed notifications.
#[derive(Debug)]
pub struct PushTarget {
    /// `http://` or `https://` URL that receives one POST per notification.
    pub url: hyper::Uri,
    /// Every secret signs each push (more than one during a rotation).
    pub secrets: Secrets,
    /// Each attempt's time limit: a receiver that never answers (silence, not a reset)
    /// costs one attempt, never the queue.
    pub attempt_timeout: Duration,
    /// Attempts in flight at once per replica.
    pub concurrency: usize,
}

/// The lifecycle's tunables (SPEC section 6). `Default` writes each default once.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// A consumed upload with no CompleteUpload this long after its consume is abandoned.
    pub completion_window: Duration,
    /// Where notifications go.
    pub delivery: Delivery,
    /// A notification not delivered (or confirmed) this long after it was queued is
    /// dead-lettered: kept, counted, no longer retried.
    pub max_age: Duration,
    /// A pulled notification not confirmed this long is handed out again (30 s, as SPEC
    /// section 3 says; tests shorten it).
    pub pull_confirm_within: Duration,
}

impl Lifecycle {
    /// Default of `--completion-window`.
    pub const COMPLETION_WINDOW: Duration = Duration::from_secs(3600);
    /// Default of `--notify-max-age`.
    pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    /// Default of `--notify-timeout`: more than a slow receiver's 10 s answer.
    pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
    /// Attempts in flight at once per replica (`--notify-concurrency`).
    pub const CONCURRENCY: usize = 64;
    /// A pulled notification not confirmed this long is handed out again (SPEC section 3).
    pub const PULL_CONFIRM_WITHIN: Duration = Duration::from_secs(30);

    /// How long a consumed record is kept at least: a completion may come late (after the
    /// upload was marked abandoned), up to twice the window after the consume.
    pub fn keep_consumed_for(&self) -> u64 {
        self.completion_window.as_secs().saturating_mul(2).max(1)
    }

    /// How often the abandonment sweep looks for due uploads: an abandonment's event and
    /// push follow within half the window or 60 s, whichever is shorter (SPEC section 3),
    /// even when the sweeping replica dies and another takes its lease.
    pub fn sweep_period(&self) -> Duration {
        (self.completion_window / 8)
            .min(Duration::from_millis(7_500))
            .max(Duration::from_millis(50))
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            completion_window: Lifecycle::COMPLETION_WINDOW,
            delivery: Delivery::Off,
            max_age: Lifecycle::MAX_AGE,
            pull_confirm_within: Lifecycle::PULL_CONFIRM_WITHIN,
        }
    }
}

/// What happened to a notification, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// Queued in the outbox.
    Queued,
    /// The receiver answered 2xx (push), or the puller confirmed it.
    Delivered,
    /// An attempt failed; it will be tried again.
    Retried,
    /// Past `--notify-max-age`: moved to the dead letters.
    DeadLettered,
}

impl Outcome {
    /// The `result` label.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Receives what happens to notifications and uploads (the metrics implement it).
pub trait LifecycleObserver: Send + Sync + 'static {
    /// `n` notifications had this outcome.
    fn notifications(&self, outcome: Outcome, n: u64);
    /// `n` uploads were marked abandoned.
    fn abandoned(&self, n: u64);
    /// The backlog now: uploads awaiting completion, and the oldest undelivered
    /// notification's age in seconds (0: none).
    fn backlog(&self, awaiting: u64, oldest_seconds: f64);
}

/// Observes nothing.
pub struct Unobserved;

impl LifecycleObserver for Unobserved {
    fn notifications(&self, _: Outcome, _: u64) {}
    fn abandoned(&self, _: u64) {}
    fn backlog(&self, _: u64, _: f64) {}
}
