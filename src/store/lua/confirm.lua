-- Delivered (push) or confirmed (pull): the notifications leave their shard's outbox.
-- KEYS[1]: the outbox stream. ARGV: the consumer group, then the stream ids.
-- Returns how many were still unacknowledged.
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return acked
