-- Queues an upload's notification in its shard's outbox, in one step with dropping the
-- upload's entry from the shard's awaiting index (same hash tag, so one slot on Cluster).
-- KEYS: the awaiting index, the outbox stream. ARGV: awaiting member, always (1: queue even
-- if the entry was gone: the completion itself), deliver (0: notifications are off, only the
-- entry goes), webhook id, event type, record name, body.
-- Returns the stream id of the queued notification, or false.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' and (removed == 1 or ARGV[2] == '1') then
  return redis.call('XADD', KEYS[2], '*', 'webhook_id', ARGV[4], 'type', ARGV[5], 'record', ARGV[6], 'body', ARGV[7])
end
return false
