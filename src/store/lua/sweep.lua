-- The abandonment sweep's step for one upload it found due: a record still `consumed`
-- `window` seconds after its consume becomes `abandoned`, keeping the expiry.
-- KEYS[1]: the record. ARGV: now, window (seconds).
-- Returns {'wait', consumed_at} (not yet due), {'missing'} (no upload awaits), or the record's
-- value after the step (abandoned or completed: the sweep may have to queue its notification).
local v = redis.call('GET', KEYS[1])
if not v or string.match(v, '^%d+$') then return {'missing'} end
local state, fp, issued, changed, idem, sub = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|?(%x*)$')
if state == 'consumed' then
  if tonumber(changed) + tonumber(ARGV[2]) > tonumber(ARGV[1]) then return {'wait', changed} end
  local value = 'v1|abandoned|' .. fp .. '|' .. issued .. '|' .. ARGV[1] .. '|' .. idem .. '|' .. sub .. '|' .. changed .. '|0||0||'
  redis.call('SET', KEYS[1], value, 'KEEPTTL')
  return {'record', value}
end
if state then return {'missing'} end
state = string.match(v, '^v1|(%l+)|')
if state == 'completed' or state == 'abandoned' then return {'record', v} end
return {'missing'}
