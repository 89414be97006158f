-- Admission to a subject's index, with the outstanding cap, in one atomic step on the
-- subject's slot. KEYS: the outstanding index (record name scored by `expireTime`), the
-- listing index (entry scored by issue time), the subject's name (for the upload
-- notifications, which name the subject). ARGV: outstanding member, expireTime, listing
-- member, issued_at, expired-before, cap (0: none), TTL seconds, issued-before (entries
-- issued before it are past the longest validity), the subject. Returns 1 (added) or 0 (cap
-- reached).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
local cap = tonumber(ARGV[6])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('SET', KEYS[3], ARGV[9], 'NX')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[8])
local cutoff = tonumber(ARGV[5])
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, 3)) do
  local exp = tonumber(string.match(m, '^[^:]*:[^:]*:(%-?%d+):'))
  if not exp or exp < cutoff then redis.call('ZREM', KEYS[2], m) end
end
local ttl = tonumber(ARGV[7])
for _, k in ipairs(KEYS) do
  if redis.call('TTL', k) < ttl then redis.call('EXPIRE', k, ttl) end
end
return 1
