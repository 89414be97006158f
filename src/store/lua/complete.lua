-- CompleteUpload's record step: `consumed` (or `abandoned`: then late) becomes `completed`,
-- keeping the expiry, with the upload's file (record.rs has the form). The same file id
-- again answers the first call's completion.
-- KEYS[1]: the record. ARGV: fingerprint, now, file id, file size, media type, media url
-- (the free-text ones encoded as record fields), compact form of the fingerprint, issue time.
-- Returns {outcome, at, subject digest, consumed_at, late}; outcome: ok, repeat, other (another
-- file: its id is the 6th element), or the state that refuses (missing, issued, revoked).
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local state, fp, issued, changed, idem, sub, consumed, late, file = read_record(v, ARGV[1], ARGV[7], ARGV[8])
if not state then return {'missing'} end
if state == 'consumed' or state == 'abandoned' then
  consumed = consumed or changed
  if state == 'abandoned' then late = '1' else late = '0' end
  redis.call('SET', KEYS[1], 'v1|completed|' .. fp .. '|' .. issued .. '|' .. ARGV[2] .. '|' .. idem .. '|' .. sub
    .. '|' .. consumed .. '|' .. late .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[6], 'KEEPTTL')
  return {'ok', ARGV[2], sub, consumed, late}
end
if state == 'completed' then
  if file == ARGV[3] then return {'repeat', changed, sub, consumed, late} end
  return {'other', changed, sub, consumed, late, file}
end
return {state, changed, sub, consumed or changed, '0'}
