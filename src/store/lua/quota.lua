-- Quotas (GCRA, see `crate::quota`; the step itself is `gcra.lua`, which comes first): checks every key of the group with the server's clock,
-- and charges them all only if every one has room. Returns `{0, 0}` or `{index, wait_ms}`.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new = {}
for i, key in ipairs(KEYS) do
  local room, value = gcra(tonumber(redis.call('GET', key) or '0'), now, tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]))
  if not room then return {i, value} end
  new[i] = value
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%d', new[i]), 'PX', string.format('%d', new[i] - now))
end
return {0, 0}
