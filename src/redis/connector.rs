//! Staying connected to Redis in its three deployments (see [`super::url`]).
//!
//! | deployment | connection |
//! |---|---|
//! | one server | one multiplexed connection, dialled in the background and redialled when it breaks or stops answering |
//! | Redis Cluster | `ClusterConnection`: follows MOVED/ASK and topology changes; connected in the background until the cluster answers, rebuilt when calls keep failing |
//! | Sentinel | one multiplexed connection to the master the sentinels name (followed by the sibling module `sentinel`), redialled like a single server's |
//!
//! A timeout is not an error to the redis crate: a connection to a peer that went silent
//! (a dead host, a stale conntrack entry) would be kept for as long as TCP retransmits, about
//! 15 minutes. So the store reports each call's fate ([`Connector::answered`],
//! [`Connector::failed`]), and the keeper task of the deployment redials after
//! [`REDIAL_AFTER_TIMEOUTS`] timeouts in a row or a failed health `PING`. This file holds
//! what the callers and the keepers share; the keepers themselves live apart, one per
//! deployment. They run only while a [`Connector`] does: a store that is dropped (a test, a
//! reconfiguration) must not leave tasks dialling a Redis nobody uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::connection::{Conn, Link};

/// What a failed call tells the connector about the connection it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the store timeout: the peer may be gone without a reset (a dead host,
    /// a stale conntrack entry), which TCP alone would notice only after ~15 minutes.
    Timeout,
    /// The health `PING` failed or did not answer in time: redial at once.
    PingFailed,
    /// The connection broke, or the node says it is no longer the master (`READONLY`).
    Broken,
    /// The master answered but lacks replicas (`NOREPLICAS`, or a `WAIT` short of them): the
    /// connection is fine, but with Sentinel a failover may be under way (the old master
    /// loses its replicas as they are moved), so the sentinels are asked again now rather
    /// than at the next poll.
    NoReplicas,
}

/// Consecutive call timeouts on one connection after which it is dropped and redialled. One
/// slow call is not a dead connection; several in a row, with none answered, are.
pub const REDIAL_AFTER_TIMEOUTS: u32 = 3;
/// At most one redial per this interval, so a Redis that is merely slow is not hammered.
pub(super) const MIN_REDIAL_GAP: Duration = Duration::from_millis(500);

/// The state every clone of a [`Connector`] shares.
pub(super) struct Shared {
    /// Fails its `changed` once every [`Connector`] is dropped (nothing is ever sent): the
    /// background tasks' cue to end.
    owner: tokio::sync::watch::Receiver<()>,
    current: ArcSwapOption<Conn>,
    /// Wakes the keeper task: redial (and, for Sentinel, ask where the master is) now.
    pub(super) redial: tokio::sync::Notify,
    /// Wakes the Sentinel keeper: ask where the master is and which replicas it has now,
    /// without redialling a master that did not move (see [`Failure::NoReplicas`]).
    pub(super) ask: tokio::sync::Notify,
    /// Timeouts in a row on the current connection; any answer resets it.
    timeouts: AtomicU32,
    /// The connection broke (or failed a health PING): redial without the usual gap.
    urgent: AtomicBool,
    /// Wakes the calls waiting for a connection (see [`Connector::ready`]).
    installed: tokio::sync::Notify,
    /// A call waited its whole bound for a connection and none came: until one is installed,
    /// calls are told at once (see [`Connector::ready`]).
    starved: AtomicBool,
    /// The generation of the connection installed last, for what must look at every new
    /// connection at once (the memory watch: a reconnect may have reached another server).
    generations: tokio::sync::watch::Sender<u64>,
}

/// Keeps a connection to Redis up: what the store's calls use. A keeper task per deployment
/// dials, and redials when told the connection stopped answering, for as long as a clone of
/// the connector lives.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
    /// Dropped with the last clone, which ends the background tasks (see
    /// [`Shared::spawn_while_owned`]). The tasks hold [`Shared`], never this.
    _owner: Arc<tokio::sync::watch::Sender<()>>,
}

impl Connector {
    /// A connector with no connection yet, and its shared state for a keeper task.
    pub(super) fn unconnected() -> (Connector, Arc<Shared>) {
        let (owner, owned) = tokio::sync::watch::channel(());
        let shared = Arc::new(Shared {
            owner: owned,
            current: ArcSwapOption::empty(),
            redial: tokio::sync::Notify::new(),
            ask: tokio::sync::Notify::new(),
            timeouts: AtomicU32::new(0),
            urgent: AtomicBool::new(false),
            installed: tokio::sync::Notify::new(),
            starved: AtomicBool::new(false),
            generations: tokio::sync::watch::Sender::new(0),
        });
        (
            Connector {
                shared: shared.clone(),
                _owner: Arc::new(owner),
            },
            shared,
        )
    }

    /// The connection to use now; `None` until the first dial.
    pub fn get(&self) -> Option<Conn> {
        self.shared.current()
    }

    /// The connection to use now, waiting up to `within` for the first dial (a call that
    /// arrives as the service starts need not fail for being early). Once a call has waited
    /// that long in vain, the next ones answer `None` at once until a connection is installed:
    /// through an outage each call would otherwise hold its admission slot, and its caller,
    /// for the whole bound, and the calls queued behind it would be shed as an overload.
    pub async fn ready(&self, within: Duration) -> Option<Conn> {
        // The common case, without touching the notifier's lock (shared by every call).
        if let Some(conn) = self.get() {
            return Some(conn);
        }
        if self.shared.starved.load(Ordering::Relaxed) {
            return None;
        }
        let installed = self.shared.installed.notified();
        tokio::pin!(installed);
        // Registered before looking, so an install in between is not missed.
        installed.as_mut().enable();
        if let Some(conn) = self.get() {
            return Some(conn);
        }
        let _ = tokio::time::timeout(within, installed).await;
        let conn = self.get();
        if conn.is_none() {
            self.shared.starved.store(true, Ordering::Relaxed);
        }
        conn
    }

    /// Changes each time a new connection is installed (a first dial, a redial, a failover).
    pub fn installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.installs()
    }

    /// The state its background tasks hold (which does not keep them running).
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A call on `conn` answered: it is alive.
    pub fn answered(&self, conn: &Conn) {
        if self.is_current(conn) {
            self.shared.timeouts.store(0, Ordering::Relaxed);
        }
    }

    /// A call on `conn` failed this way: redial when the connection looks dead. Reports
    /// about a connection that was already replaced are ignored.
    pub fn failed(&self, conn: &Conn, failure: Failure) {
        if !self.is_current(conn) {
            return;
        }
        let redial = match failure {
            Failure::Timeout => {
                self.shared.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= REDIAL_AFTER_TIMEOUTS
            }
            Failure::PingFailed | Failure::Broken => {
                // Nothing more can come of this connection: no reason to wait.
                self.shared.urgent.store(true, Ordering::Relaxed);
                true
            }
            Failure::NoReplicas => {
                // One stored permit however many calls report it; only Sentinel's keeper
                // listens.
                self.shared.ask.notify_one();
                false
            }
        };
        if redial {
            self.shared.redial.notify_one();
        }
    }

    fn is_current(&self, conn: &Conn) -> bool {
        self.shared
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.generation() == conn.generation())
    }
}

impl Shared {
    /// Spawns `task` to run until it ends or every [`Connector`] is dropped, whichever comes
    /// first: what each keeper and the memory watch run in, so none outlives its owner.
    /// Dropped at an await point, a task loses only work whose result nobody would read.
    pub(super) fn spawn_while_owned(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut owner = self.owner.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = owner.changed() => {}
                () = task => {}
            }
        });
    }

    /// Changes each time a new connection is installed.
    pub(super) fn installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generations.subscribe()
    }

    /// The connection installed last; `None` before the first.
    pub(super) fn current(&self) -> Option<Conn> {
        self.current.load().as_deref().cloned()
    }

    /// Whether a connection was ever installed.
    pub(super) fn connected(&self) -> bool {
        self.current.load().is_some()
    }

    /// Makes `link` the connection calls use from now on. `WAIT`s on it are bounded by
    /// `wait`.
    pub(super) fn install(&self, link: Link, promotable: Arc<AtomicU32>, wait: Duration) {
        let generation = self
            .current
            .load()
            .as_ref()
            .map_or(0, |c| c.generation() + 1);
        let conn = Conn::new(link, generation, promotable, wait);
        self.timeouts.store(0, Ordering::Relaxed);
        self.current.store(Some(Arc::new(conn)));
        self.starved.store(false, Ordering::Relaxed);
        self.installed.notify_waiters();
        self.generations.send_replace(generation);
    }

    /// Whether the last redial request was for a broken connection (and clears it).
    pub(super) fn take_urgent(&self) -> bool {
        self.urgent.swap(false, Ordering::Relaxed)
    }

    /// Waits until told to redial: at once for a broken connection, else at most once per
    /// [`MIN_REDIAL_GAP`].
    pub(super) async fn redial_requested(&self) {
        let installed = tokio::time::Instant::now();
        self.redial.notified().await;
        if !self.take_urgent() {
            // Timeouts: the connection may be fine and Redis merely slow.
            tokio::time::sleep_until(installed + MIN_REDIAL_GAP).await;
        }
    }
}
