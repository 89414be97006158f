-- GCRA (`crate::quota::gcra`): the key's theoretical arrival time `tat` at `now` (ms), with its
-- quota's interval and tolerance: `{true, new tat}` if it has room, else `{false, wait ms}`.
local function gcra(tat, now, interval, tolerance)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then return false, allow_at - now end
  return true, tat + interval
end
