-- Revoke: `issued` becomes `revoked` keeping the expiry. The record is named by the
-- signature's fingerprint (ARGV[1], RevokeSignature) or by its subject's digest (ARGV[3],
-- RevokeSubject); an empty one is not compared, and the caller always gives one of them.
-- ARGV[4] and ARGV[5]: the compact form of the fingerprint and the issue time, for a record
-- in the compact issued form (which has no subject). Returns `{state before, at, subject
-- digest, consumed_at}`.
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub, consumed
if string.match(v, '^%d+$') then
  if ARGV[3] ~= '' or v ~= ARGV[4] then return {'missing'} end
  state, fp, issued, changed, sub = 'issued', ARGV[1], ARGV[5], ARGV[5], ''
else
  state, fp, issued, changed, idem, sub = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|?(%x*)$')
  if not state then
    state, fp, issued, changed, idem, sub, consumed = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|(%x*)|(%-?%d+)|')
  end
  if not state then return {'missing'} end
  if ARGV[1] ~= '' and fp ~= ARGV[1] then return {'missing'} end
  if ARGV[3] ~= '' and sub ~= ARGV[3] then return {'missing'} end
end
if state == 'issued' then
  local tail = ''
  if sub ~= '' then tail = '|' .. sub end
  redis.call('SET', KEYS[1], 'v1|revoked|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. tail, 'KEEPTTL')
  return {'issued', ARGV[2], sub}
end
return {state, changed, sub, consumed or changed}
