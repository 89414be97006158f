//! One shutdown for the background tasks of a server: each task is spawned through a
//! [`Shutdown`], ends when told, and the owner awaits them all before it returns, so no task
//! outlives the server that started it.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// The signal and the tasks that obey it. Clones share both.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// Nothing spawned yet, nothing requested.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Spawns `task`, to be awaited by [`Shutdown::finish`]; the task itself must end once
    /// [`Shutdown::requested`] resolves.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Resolves once shutdown is requested (at once if it already was); owns what it needs,
    /// so a task can hold it.
    pub fn requested(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Tells every task to end, without waiting for them.
    pub fn request(&self) {
        self.token.cancel();
    }

    /// A signal of its own for tasks that must stop before the others (requested with this
    /// one, or alone), awaited with the same tasks.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    /// Requests shutdown and waits until every task spawned through this shutdown (or its
    /// children) has ended, at most `within`. False: some were still running at the end of it.
    pub async fn finish(&self, within: Duration) -> bool {
        self.request();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks spawned and not yet ended.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_every_task_and_bounds_the_wait() {
        let shutdown = Shutdown::new();
        shutdown.spawn(shutdown.requested());
        let child = shutdown.child();
        child.request();
        assert!(!shutdown.is_requested(), "a child's request stays its own");
        shutdown.spawn(child.requested());
        assert!(shutdown.finish(Duration::from_secs(1)).await);
        assert_eq!(shutdown.running(), 0);

        let deaf = Shutdown::new();
        deaf.spawn(std::future::pending::<()>());
        assert!(!deaf.finish(Duration::from_secs(1)).await);
        assert_eq!(deaf.running(), 1);
    }
}
