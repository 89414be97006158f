-- A page of a subject's listing index, newest first, after a cursor, skipping (and
-- deleting) expired entries. KEYS: the listing index. ARGV: expired-before, count, cursor
-- given (1/0), cursor score, cursor member. Returns `{member, score, member, score, ...}`.
local cutoff = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local max = '+inf'
if ARGV[3] == '1' then max = ARGV[4] end
local out, expired = {}, {}
local offset, batch = 0, want + 16
while #out < 2 * want do
  local r = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES', 'LIMIT', offset, batch)
  for i = 1, #r, 2 do
    local m, s = r[i], r[i + 1]
    if not (ARGV[3] == '1' and tonumber(s) == tonumber(ARGV[4]) and m >= ARGV[5]) then
      local exp = tonumber(string.match(m, '^[^:]*:[^:]*:(%-?%d+):'))
      if not exp or exp < cutoff then
        expired[#expired + 1] = m
      elseif #out < 2 * want then
        out[#out + 1] = m
        out[#out + 1] = s
      end
    end
  end
  if #r < 2 * batch then break end
  offset = offset + batch
end
for _, m in ipairs(expired) do redis.call('ZREM', KEYS[1], m) end
return out
