//! The awaiting index and the outbox in Redis: per shard, a sorted set of awaiting uploads
//! (scored by when the sweep should look at them), a stream of notifications read through
//! the consumer group `vodsigner`, and a stream of dead letters, all under the shard's hash
//! tag (`{prefix}uploads:{N}:...`). Every command names one key, or keys of one shard.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};

use super::{
    Handle, Outbox, Outgoing, Queued, SHARDS, awaiting_member, parse_awaiting_member, shard_of,
};
use crate::redis::Conn;
use crate::store::{DueUpload, RedisStore, StoreError, StoreOp};

/// The consumer group of every outbox stream.
const GROUP: &str = "vodsigner";

impl RedisStore {
    /// The key of the sweep's lease.
    fn sweep_lease_key(&self) -> String {
        format!("{}uploads:sweeper", self.prefix())
    }

    /// Runs an outbox stream command; on `NOGROUP` (the stream or its group is gone: a new
    /// or emptied Redis) creates the group and runs it once more.
    async fn with_group<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        shard: u32,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        match self
            .bounded(conn, async |c| cmd.query_async::<T>(c).await)
            .await
        {
            Err(e) if e.message.contains("NOGROUP") => {
                let mut create = redis::cmd("XGROUP");
                create
                    .arg("CREATE")
                    .arg(self.outbox_key(shard))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM");
                match self
                    .bounded(conn, async |c| create.query_async::<()>(c).await)
                    .await
                {
                    Err(e) if !e.message.contains("BUSYGROUP") => return Err(e),
                    _ => {}
                }
                self.bounded(conn, async |c| cmd.query_async::<T>(c).await)
                    .await
            }
            other => other,
        }
    }
}

/// A notification from its stream entry; `None` for an entry this version does not know.
fn queued_of(shard: u32, entry: &StreamId) -> Option<Queued> {
    let text = |name: &str| entry.get::<String>(name);
    Some(Queued {
        handle: Handle {
            shard,
            id: entry.id.clone(),
        },
        webhook_id: text("webhook_id")?,
        event_type: text("type")?,
        record: text("record").unwrap_or_default(),
        body: text("body")?,
    })
}

/// The handles grouped by shard, ids in order.
fn by_shard(handles: &[Handle]) -> BTreeMap<u32, Vec<&str>> {
    let mut shards: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for h in handles {
        shards.entry(h.shard).or_default().push(&h.id);
    }
    shards
}

impl Outbox for RedisStore {
    async fn queue(
        &self,
        n: &Outgoing<'_>,
        always: bool,
        deliver: bool,
    ) -> Result<bool, StoreError> {
        self.observed
            .run(StoreOp::Notify, || async move {
                let mut conn = self.conn().await?;
                let shard = shard_of(n.record.random);
                let outbox = self.outbox_key(shard);
                let mut call = self
                    .scripts
                    .queue
                    .pick(&self.memory)
                    .key(self.awaiting_key(shard));
                call.key(&outbox)
                    .arg(awaiting_member(&n.record, &n.context))
                    .arg(u8::from(always))
                    .arg(u8::from(deliver))
                    .arg(n.webhook_id)
                    .arg(n.event_type)
                    .arg(format!("{}:{}", n.record.secret_id, n.record.random))
                    .arg(n.body);
                let queued: Option<String> = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                if queued.is_some() {
                    // A notification only the old master had would vanish in a failover.
                    self.replicated(&conn, &outbox).await?;
                }
                Ok(queued.is_some())
            })
            .await
    }

    async fn due_uploads(&self, now: i64, count: usize) -> Result<Vec<DueUpload>, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Sweep, async move {
                let mut conn = self.conn().await?;
                let mut due = Vec::new();
                for shard in 0..SHARDS {
                    let mut range = redis::cmd("ZRANGEBYSCORE");
                    range
                        .arg(self.awaiting_key(shard))
                        .arg("-inf")
                        .arg(now)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(count);
                    let entries: Vec<(String, f64)> = self
                        .bounded(&mut conn, async |c| range.query_async(c).await)
                        .await?;
                    due.extend(entries.into_iter().filter_map(|(member, score)| {
                        parse_awaiting_member(&member, score as i64)
                    }));
                }
                Ok(due)
            })
            .await
    }

    async fn settle(&self, upload: &DueUpload, next: Option<i64>) -> Result<(), StoreError> {
        self.observed
            .run_unspanned(StoreOp::Sweep, async move {
                let mut conn = self.conn().await?;
                let mut call = self
                    .scripts
                    .settle
                    .pick(&self.memory)
                    .key(self.awaiting_key(shard_of(upload.random)));
                call.arg(awaiting_member(&upload.key(), &upload.context()))
                    .arg(upload.due)
                    .arg(next.map(|n| n.to_string()).unwrap_or_default());
                self.bounded(&mut conn, async |c| call.invoke_async::<i64>(c).await)
                    .await
                    .map(|_| ())
            })
            .await
    }

    async fn lease_sweep(&self, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Sweep, async move {
                let mut conn = self.conn().await?;
                let mut call = self.scripts.lease.key(self.sweep_lease_key());
                call.arg(owner).arg(lease.as_millis().max(1) as u64);
                let held: i64 = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                Ok(held == 1)
            })
            .await
    }

    async fn awaiting(&self) -> Result<u64, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Sweep, async move {
                let mut conn = self.conn().await?;
                let mut total = 0;
                for shard in 0..SHARDS {
                    let mut card = redis::cmd("ZCARD");
                    card.arg(self.awaiting_key(shard));
                    total += self
                        .bounded(&mut conn, async |c| card.query_async::<u64>(c).await)
                        .await?;
                }
                Ok(total)
            })
            .await
    }

    async fn read_new(&self, consumer: &str, count: usize) -> Result<Vec<Queued>, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Deliver, async move {
                let mut conn = self.conn().await?;
                let mut out = Vec::new();
                // From a random shard, so a busy first shard does not
                // starve the others when `count` is small.
                let start = rand::random::<u32>() % SHARDS;
                for i in 0..SHARDS {
                    let remaining = count.saturating_sub(out.len());
                    if remaining == 0 {
                        break;
                    }
                    let shard = (start + i) % SHARDS;
                    let mut read = redis::cmd("XREADGROUP");
                    read.arg("GROUP")
                        .arg(GROUP)
                        .arg(consumer)
                        .arg("COUNT")
                        .arg(remaining)
                        .arg("STREAMS")
                        .arg(self.outbox_key(shard))
                        .arg(">");
                    let reply: Option<StreamReadReply> =
                        self.with_group(&mut conn, shard, &read).await?;
                    out.extend(
                        reply
                            .into_iter()
                            .flat_map(|r| r.keys)
                            .flat_map(|k| k.ids)
                            .filter_map(|e| queued_of(shard, &e)),
                    );
                }
                Ok(out)
            })
            .await
    }

    async fn claim_stale(
        &self,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<Queued>, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Deliver, async move {
                let mut conn = self.conn().await?;
                let mut out = Vec::new();
                for shard in 0..SHARDS {
                    let remaining = count.saturating_sub(out.len());
                    if remaining == 0 {
                        break;
                    }
                    let mut claim = redis::cmd("XAUTOCLAIM");
                    claim
                        .arg(self.outbox_key(shard))
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(idle.as_millis() as u64)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(remaining);
                    let reply: StreamAutoClaimReply =
                        self.with_group(&mut conn, shard, &claim).await?;
                    out.extend(reply.claimed.iter().filter_map(|e| queued_of(shard, e)));
                }
                Ok(out)
            })
            .await
    }

    async fn keep(&self, consumer: &str, handles: &[Handle]) -> Result<(), StoreError> {
        self.observed
            .run_unspanned(StoreOp::Deliver, async move {
                let mut conn = self.conn().await?;
                for (shard, ids) in by_shard(handles) {
                    let mut claim = redis::cmd("XCLAIM");
                    claim
                        .arg(self.outbox_key(shard))
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(0)
                        .arg(&ids)
                        .arg("JUSTID");
                    self.bounded(&mut conn, async |c| {
                        claim.query_async::<redis::Value>(c).await
                    })
                    .await?;
                }
                Ok(())
            })
            .await
    }

    async fn confirm(&self, handles: &[Handle]) -> Result<u32, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Deliver, async move {
                let mut conn = self.conn().await?;
                let mut confirmed = 0;
                for (shard, ids) in by_shard(handles) {
                    let mut call = self
                        .scripts
                        .confirm
                        .pick(&self.memory)
                        .key(self.outbox_key(shard));
                    call.arg(GROUP).arg(&ids);
                    confirmed += self
                        .bounded(&mut conn, async |c| call.invoke_async::<u32>(c).await)
                        .await?;
                }
                Ok(confirmed)
            })
            .await
    }

    async fn dead_letter(&self, q: &Queued, why: &str, now: i64) -> Result<bool, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Deliver, async move {
                let mut conn = self.conn().await?;
                let shard = q.handle.shard;
                let mut call = self
                    .scripts
                    .dead_letter
                    .pick(&self.memory)
                    .key(self.outbox_key(shard));
                call.key(self.dead_letters_key(shard))
                    .arg(GROUP)
                    .arg(&q.handle.id)
                    .arg(&q.webhook_id)
                    .arg(&q.event_type)
                    .arg(&q.record)
                    .arg(&q.body)
                    .arg(why)
                    .arg(now);
                let moved: i64 = self
                    .bounded(&mut conn, async |c| call.invoke_async(c).await)
                    .await?;
                Ok(moved == 1)
            })
            .await
    }

    async fn oldest_queued(&self) -> Result<Option<i64>, StoreError> {
        self.observed
            .run_unspanned(StoreOp::Deliver, async move {
                let mut conn = self.conn().await?;
                let mut oldest: Option<i64> = None;
                for shard in 0..SHARDS {
                    let mut first = redis::cmd("XRANGE");
                    first
                        .arg(self.outbox_key(shard))
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(1);
                    let reply: StreamRangeReply = self
                        .bounded(&mut conn, async |c| first.query_async(c).await)
                        .await?;
                    if let Some(entry) = reply.ids.first() {
                        let at = Handle {
                            shard,
                            id: entry.id.clone(),
                        }
                        .queued_at_ms();
                        oldest = Some(oldest.map_or(at, |o| o.min(at)));
                    }
                }
                Ok(oldest)
            })
            .await
    }
}
