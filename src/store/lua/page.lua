-- A page of a subject's listing index, newest first, after a cursor, skipping (and
-- deleting) expired entries. KEYS: the listing index. ARGV: expired-before, count, cursor
-- given (1/0), cursor score, cursor member. Returns `{member, score, member, score, ...}`.
-- The page goes on from the cursor's rank (`ZREVRANK`, O(log n)), so a page costs the same
-- however deep into the index it is, and many entries with one issue time cost no rescan;
-- only when the cursor's entry has left the index (expired) does it seek by score.
local cutoff = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local out, expired = {}, {}
local batch = want + 16
local function take(r, skip)
  for i = 1, #r, 2 do
    local m, s = r[i], r[i + 1]
    if not (skip and skip(m, s)) then
      local exp = tonumber(string.match(m, '^[^:]*:[^:]*:(%-?%d+):'))
      if not exp or exp < cutoff then
        expired[#expired + 1] = m
      elseif #out < 2 * want then
        out[#out + 1] = m
        out[#out + 1] = s
      end
    end
  end
end
local rank = 0
if ARGV[3] == '1' then
  local r = redis.call('ZREVRANK', KEYS[1], ARGV[5])
  if r then rank = r + 1 else rank = nil end
end
if rank then
  while #out < 2 * want do
    local r = redis.call('ZREVRANGE', KEYS[1], rank, rank + batch - 1, 'WITHSCORES')
    take(r)
    if #r < 2 * batch then break end
    rank = rank + batch
  end
else
  local offset = 0
  local function before_cursor(m, s)
    return tonumber(s) == tonumber(ARGV[4]) and m >= ARGV[5]
  end
  while #out < 2 * want do
    local r = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[4], '-inf', 'WITHSCORES', 'LIMIT', offset, batch)
    take(r, before_cursor)
    if #r < 2 * batch then break end
    offset = offset + batch
  end
end
for _, m in ipairs(expired) do redis.call('ZREM', KEYS[1], m) end
return out
