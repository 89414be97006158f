//! PullEvents and ConfirmEvents: the notifications handed to app servers that vod-signer
//! cannot reach (`--notify-mode pull`), as Tencent VOD's reliable callback does. A pulled
//! notification is confirmed by its handle; one not confirmed within 30 s is handed out
//! again; one older than `--notify-max-age` goes to the dead letters instead.

use std::time::Duration;

use tracing::warn;

use super::UseCases;
use crate::notify::{Delivery, Outcome};
use crate::refusal::Refusal;
use crate::store::{Handle, Queued, Store};

/// Most notifications one PullEvents answers with (SPEC section 3).
pub const MAX_PULL: u32 = 16;
/// Longest PullEvents waits for a first notification, seconds.
pub const MAX_PULL_WAIT: u32 = 5;
/// Most handles one ConfirmEvents takes.
const MAX_CONFIRM: usize = 256;
/// The consumer name every puller shares: what one caller took, another can take over once
/// it stays unconfirmed past the confirmation window.
const PULL_CONSUMER: &str = "pull";
/// How often a waiting PullEvents looks again.
const PULL_POLL: Duration = Duration::from_millis(100);

/// One notification as PullEvents hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Confirms it.
    pub handle: String,
    /// The push's `webhook-id`.
    pub webhook_id: String,
    /// The push body, JSON.
    pub body: String,
    /// When it was queued, Unix seconds.
    pub created_at: i64,
}

impl<S: Store> UseCases<S> {
    fn require_pull(&self) -> Result<(), Refusal> {
        match self.settings.lifecycle.delivery {
            Delivery::Pull => Ok(()),
            Delivery::Push(_) => Err(Refusal::invalid(
                "notifications are pushed to --notify-url by this deployment; PullEvents and \
                 ConfirmEvents need --notify-mode pull",
            )),
            Delivery::Off => Err(Refusal::invalid(
                "notifications are off in this deployment; PullEvents and ConfirmEvents need \
                 --notify-mode pull",
            )),
        }
    }

    /// PullEvents: up to `max` (0: 16) notifications, waiting up to `wait_seconds` for a
    /// first one.
    pub async fn pull_events(
        &self,
        max: u32,
        wait_seconds: u32,
    ) -> Result<Vec<Notification>, Refusal> {
        self.require_pull()?;
        let max = match max {
            0 => MAX_PULL,
            n if n > MAX_PULL => {
                return Err(Refusal::invalid(format!(
                    "max {n} is above the maximum of {MAX_PULL}"
                )));
            }
            n => n,
        } as usize;
        if wait_seconds > MAX_PULL_WAIT {
            return Err(Refusal::invalid(format!(
                "wait_seconds {wait_seconds} is above the maximum of {MAX_PULL_WAIT}"
            )));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait_seconds));
        loop {
            let mut taken = self
                .store
                .claim_stale(
                    PULL_CONSUMER,
                    self.settings.lifecycle.pull_confirm_within,
                    max,
                )
                .await?;
            if taken.len() < max {
                taken.extend(
                    self.store
                        .read_new(PULL_CONSUMER, max - taken.len())
                        .await?,
                );
            }
            let fresh = self.without_expired(taken).await?;
            if !fresh.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(fresh
                    .into_iter()
                    .map(|q| Notification {
                        created_at: q.handle.queued_at_ms() / 1000,
                        handle: q.handle.to_string(),
                        webhook_id: q.webhook_id,
                        body: q.body,
                    })
                    .collect());
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + PULL_POLL)).await;
        }
    }

    /// Moves the notifications past `--notify-max-age` to the dead letters; the rest.
    async fn without_expired(&self, taken: Vec<Queued>) -> Result<Vec<Queued>, Refusal> {
        let max_age_ms = self.settings.lifecycle.max_age.as_millis() as i64;
        let now_ms = crate::clock::unix_now_ms();
        let mut fresh = Vec::with_capacity(taken.len());
        for q in taken {
            if now_ms.saturating_sub(q.handle.queued_at_ms()) < max_age_ms {
                fresh.push(q);
                continue;
            }
            let why = "not confirmed within --notify-max-age";
            if self.store.dead_letter(&q, why, self.clock.now()).await? {
                self.lifecycle.notifications(Outcome::DeadLettered, 1);
                warn!(webhook_id = %q.webhook_id, record = %q.record, "notification dead-lettered: {why}");
            }
        }
        Ok(fresh)
    }

    /// ConfirmEvents: the pulled notifications with these handles are processed; answers
    /// how many of them were still unconfirmed.
    pub async fn confirm_events(&self, handles: &[String]) -> Result<u32, Refusal> {
        self.require_pull()?;
        if handles.len() > MAX_CONFIRM {
            return Err(Refusal::invalid(format!(
                "at most {MAX_CONFIRM} handles per call"
            )));
        }
        let parsed = handles
            .iter()
            .map(|h| {
                Handle::parse(h).ok_or_else(|| {
                    let shown: String = h.chars().take(64).collect();
                    Refusal::invalid(format!("{shown:?} is not a notification handle"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let confirmed = self.store.confirm(&parsed).await?;
        self.lifecycle
            .notifications(Outcome::Delivered, u64::from(confirmed));
        Ok(confirmed)
    }
}
