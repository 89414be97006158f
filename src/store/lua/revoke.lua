-- Revoke: `issued` becomes `revoked` keeping the expiry. The record is named by the
-- signature's fingerprint (ARGV[1], RevokeSignature) or by its subject's digest (ARGV[3],
-- RevokeSubject); an empty one is not compared, and the caller always gives one of them.
-- ARGV[4] and ARGV[5]: the compact form of the fingerprint and the issue time, for a record
-- in a compact issued form (`read_record` in record.lua reads every form; one revoked by its
-- subject keeps the fingerprint's first 15 digits, all it holds). ARGV[6..8]: the subject's
-- outstanding set around its digest and the entry to release from it (`release` in
-- record.lua; empty on Redis Cluster). Returns `{state before, at, subject digest,
-- consumed_at}`.
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub, consumed = read_record(v, ARGV[1], ARGV[4], ARGV[5])
if not state or (ARGV[3] ~= '' and sub ~= ARGV[3]) then return {'missing'} end
if state == 'issued' then
  local tail = ''
  if sub ~= '' then tail = '|' .. sub end
  redis.call('SET', KEYS[1], 'v1|revoked|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. tail, 'KEEPTTL')
  release(sub, ARGV[6], ARGV[7], ARGV[8])
  return {'issued', ARGV[2], sub}
end
return {state, changed, sub, consumed or changed}
