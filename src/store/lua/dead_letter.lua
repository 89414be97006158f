-- A notification past --notify-max-age leaves the outbox for the shard's dead letters, kept
-- with why and when. KEYS: the outbox stream, the dead letters stream (same hash tag).
-- ARGV: the consumer group, the stream id, webhook id, event type, record name, body, why,
-- when (Unix seconds). Returns 1 if it was still in the outbox.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local deleted = redis.call('XDEL', KEYS[1], ARGV[2])
if deleted == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'queued_id', ARGV[2], 'webhook_id', ARGV[3], 'type', ARGV[4],
  'record', ARGV[5], 'body', ARGV[6], 'why', ARGV[7], 'at', ARGV[8])
return 1
