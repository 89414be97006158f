-- After a record left `issued` (consume, revoke): its subject's outstanding cap no longer
-- counts it, and the subject's name stays at least as long as the record may still complete.
-- KEYS: the subject's outstanding index, its name key. ARGV: the record name, seconds.
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
