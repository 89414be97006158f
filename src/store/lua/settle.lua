-- The sweep's decision about an awaiting entry, unless something moved it since the sweep
-- read it (a new consume attempt): drop it, or look again later.
-- KEYS[1]: the awaiting index. ARGV: member, the due time the sweep read, the new due time
-- (empty: drop the entry). Returns 1 if applied.
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
end
return 1
