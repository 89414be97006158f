-- Consume (flagged allow-oom: it only rewrites its one record; a compact issued record grows
-- by one small string): `issued` becomes `consumed` keeping the expiry, but at least ARGV[6] seconds
-- more (so the upload can still complete), and the subject digest when the record has one; a
-- repeat with the same idempotency token answers the same success, also once the upload is
-- over. Returns `{outcome, at, subject digest, consumed_at}`. ARGV: fingerprint, now,
-- idempotency token, compact form of the fingerprint, issue time, seconds to keep
-- (`read_record` in record.lua reads every form), then the subject's outstanding set around
-- its digest and the entry to release from it (`release`; empty on Redis Cluster).
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub, consumed = read_record(v, ARGV[1], ARGV[4], ARGV[5])
if not state then return {'missing'} end
if state == 'issued' then
  local tail = ''
  if sub ~= '' then tail = '|' .. sub end
  redis.call('SET', KEYS[1], 'v1|consumed|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. tail, 'KEEPTTL')
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
  release(sub, ARGV[7], ARGV[8], ARGV[9])
  return {'ok', ARGV[2], sub}
end
consumed = consumed or changed
if state ~= 'revoked' and ARGV[3] ~= '' and idem == ARGV[3] then return {'ok', consumed, sub} end
return {state, changed, sub, consumed}
