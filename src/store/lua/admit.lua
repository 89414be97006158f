-- Admission to a subject's index, in one atomic step on the subject's slot (its quota keys
-- share the hash tag): the per-subject quotas (GCRA, `gcra.lua` comes first), then the
-- outstanding cap, then the two entries. The upkeep is kept off most issues: expired entries
-- leave the outstanding index only when they could refuse an issue, the listing index is
-- tidied by one admission in 16, and the keys' expiry is extended with room to spare, so
-- most issues only read it.
-- KEYS: the outstanding index (record name scored by `expireTime`; kept only with a cap),
-- the listing index (entry scored by issue time), the subject's name (for the upload
-- notifications), then one key per quota.
-- ARGV: outstanding member, expireTime, listing member, issued_at, expired-before, cap (0:
-- none), seconds the keys must live at least, seconds to give the indexes when extended,
-- tidy (1/0), issued-before (entries issued before it are past the longest validity), the
-- subject, seconds to give its name when extended (longer: a consumed upload may complete
-- after its record's expiry), then interval and tolerance (ms) per quota.
-- Returns {0, 0} (admitted), {-1, 0} (cap reached; quotas charged) or {i, wait_ms} (quota
-- i refused; nothing charged).
local quotas = #KEYS - 3
if quotas > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local new = {}
  for i = 1, quotas do
    local room, value = gcra(tonumber(redis.call('GET', KEYS[3 + i]) or '0'), now, tonumber(ARGV[11 + 2 * i]), tonumber(ARGV[12 + 2 * i]))
    if not room then return {i, value} end
    new[i] = value
  end
  for i = 1, quotas do
    redis.call('SET', KEYS[3 + i], string.format('%d', new[i]), 'PX', string.format('%d', new[i] - now))
  end
end
local cap = tonumber(ARGV[6])
local fresh = false
if cap > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= cap then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
    n = redis.call('ZCARD', KEYS[1])
    if n >= cap then return {-1, 0} end
  end
  -- Empty (or emptied just now) means the ZADD below creates the key, without an expiry.
  fresh = n == 0
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[7]) then
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  redis.call('SET', KEYS[3], ARGV[11], 'EX', ARGV[12])
  if cap > 0 then redis.call('EXPIRE', KEYS[1], ARGV[8]) end
elseif fresh then
  -- A new outstanding index (its last entry was released): it expires with the listing.
  redis.call('EXPIRE', KEYS[1], ARGV[8])
end
if ARGV[9] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[10])
  local cutoff = tonumber(ARGV[5])
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, 15)) do
    local exp = tonumber(string.match(m, '^[^:]*:[^:]*:(%-?%d+):'))
    if not exp or exp < cutoff then redis.call('ZREM', KEYS[2], m) end
  end
end
return {0, 0}
