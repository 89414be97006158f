//! One connection of any deployment, and `WAIT` on it as a group commit.
//!
//! Kept apart from the connector that replaces connections: a call holds a [`Conn`] for its
//! whole life (its write and the `WAIT` after it must use the same socket), while the
//! connector may install a new one meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::error::Error;

/// A connection of any deployment, usable by the redis crate's commands and scripts. It
/// remembers which dial made it, so a failure reported on it after a redial is ignored.
#[derive(Clone)]
pub struct Conn {
    link: Link,
    generation: u64,
    /// Replicas that must acknowledge a write on this connection besides
    /// `--min-replicas-ack`: with Sentinel, every replica the sentinels could promote in
    /// place of this connection's master. Kept per master, so a call still finishing on the
    /// old master after a failover never counts the new master's replicas.
    promotable: Arc<AtomicU32>,
    /// The group commit of `WAIT` on this connection (see [`Conn::replicated`]).
    waits: mpsc::UnboundedSender<Waiter>,
    /// How long a `WAIT` may wait for replicas.
    wait: Duration,
}

#[derive(Clone)]
pub(super) enum Link {
    /// One server, or the current master of a sentinel group. Never reconnects by itself
    /// (the connector replaces it), so a `WAIT` always runs on the socket its write used.
    Node(MultiplexedConnection),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

/// A call waiting for its write to reach replicas: how many, and where to answer.
struct Waiter {
    replicas: u32,
    answer: oneshot::Sender<Result<i64, Error>>,
}

/// How long a `WAIT` may wait for replicas: part of the call's store timeout, leaving room
/// for the write before it.
pub(super) fn wait_bound(timeout: Duration) -> Duration {
    (timeout * 3 / 4).max(Duration::from_millis(1))
}

impl Conn {
    /// The `generation`th connection of its connector, over `link`, with its own group
    /// commit task (which ends when the last clone of this connection is gone). `WAIT`s on it
    /// are bounded by `wait`.
    pub(super) fn new(
        link: Link,
        generation: u64,
        promotable: Arc<AtomicU32>,
        wait: Duration,
    ) -> Conn {
        let (waits, waiters) = mpsc::unbounded_channel();
        tokio::spawn(group_commit(link.clone(), waiters, wait));
        Conn {
            link,
            generation,
            promotable,
            waits,
            wait,
        }
    }

    /// Which dial of its connector made this connection.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Replicas that must acknowledge a write on this connection, beyond what the operator
    /// asked for: with Sentinel, every replica the sentinels could promote in place of its
    /// master (so a failover cannot pick one that lacks an acknowledged write); 0 otherwise.
    pub fn promotable_replicas(&self) -> u32 {
        self.promotable.load(Ordering::Relaxed)
    }

    /// The connection itself, for commands routed by hand (the memory watch's `INFO` to every
    /// Cluster master).
    pub(super) fn link(&self) -> &Link {
        &self.link
    }

    /// Waits until `replicas` replicas acknowledged the write just made to `key` (Redis
    /// `WAIT`, bounded); answers how many did. Call it only after the write's reply arrived.
    ///
    /// One server or Sentinel: `WAIT` blocks its connection on the server, so one per call
    /// would serialize every call behind a replica round trip. Instead the calls waiting at a
    /// moment share one `WAIT` (group commit): it is sent after their requests reached this
    /// task, hence after their writes' replies, hence after their writes on this connection,
    /// which it therefore covers.
    ///
    /// Cluster: the `WAIT` goes to the master that owns `key`'s slot (over the connection the
    /// write used), not to every master: a shard that lost its replica must not stop the
    /// writes of every other shard.
    pub async fn replicated(&self, replicas: u32, key: &str) -> Result<i64, Error> {
        if let Link::Cluster(cluster) = &self.link {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(replicas).arg(self.wait.as_millis() as u64);
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_key(key, SlotAddr::Master),
            ));
            let acked = cluster.clone().route_command(cmd, route).await?;
            return Ok(redis::from_redis_value::<i64>(acked)?);
        }
        let (answer, reply) = oneshot::channel();
        self.waits
            .send(Waiter { replicas, answer })
            .map_err(|_| Error::Closed)?;
        reply.await.map_err(|_| Error::Closed)?
    }
}

/// Sends one `WAIT` for every group of calls that asked while the previous one was out.
async fn group_commit(
    mut link: Link,
    mut waiters: mpsc::UnboundedReceiver<Waiter>,
    wait: Duration,
) {
    let mut batch = Vec::new();
    while waiters.recv_many(&mut batch, usize::MAX).await > 0 {
        let replicas = batch.iter().map(|w| w.replicas).max().unwrap_or(0);
        let started = tokio::time::Instant::now();
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(wait.as_millis() as u64);
        // The server answers by `wait`; the margin covers the round trip.
        let acked = match tokio::time::timeout(wait * 2, cmd.query_async::<i64>(&mut link)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Error::Redis(e)),
            Err(_) => Err(Error::Timeout {
                what: "WAIT did not answer",
                after: wait * 2,
            }),
        };
        debug!(calls = batch.len(), replicas, took_us = started.elapsed().as_micros() as u64, acked = ?acked, "WAIT");
        for waiter in batch.drain(..) {
            let _ = waiter.answer.send(acked.clone());
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.link.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.link.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Node(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Node(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Node(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}
