-- Reading a record's value (record.rs has its forms), shared by the scripts that change one
-- (sent as one text with each: see scripts.rs).
-- read_record(v, fp, compact, issued): the value `v` read for the signature with fingerprint
-- `fp` (empty: any signature), `compact` the compact form of that fingerprint and `issued` its
-- issue time (both for the compact forms, which hold neither). Returns state, fingerprint,
-- issued_at, changed_at, idempotency token, subject digest, and for a completed or abandoned
-- record consumed_at, late and file id; nil for another signature's record or an unreadable
-- one. A fingerprint of 15 hex digits (a compact record revoked by its subject, which knows
-- only that much) stands for every fingerprint that starts with it.
-- release(sub, head, tail, member): a record that leaves `issued` no longer counts against
-- its subject's cap: its entry `member` leaves the outstanding set `head .. sub .. tail`. Only
-- on one server, where the caller names the set (`head` not empty): on Redis Cluster it lives
-- in another slot than the record, and the caller removes the entry itself.
local function release(sub, head, tail, member)
  if sub ~= '' and head ~= '' then redis.call('ZREM', head .. sub .. tail, member) end
end
local function same_fingerprint(stored, fp)
  return stored == fp or (#stored == 15 and stored == string.sub(fp, 1, 15))
end
local function read_record(v, fp, compact, issued)
  if string.match(v, '^%d+$') then
    if fp == '' or v ~= compact then return nil end
    return 'issued', fp, issued, issued, '', ''
  end
  local prefix, sub = string.match(v, '^(%x+):(%x+)$')
  if prefix then
    if fp == '' then return 'issued', prefix, issued, issued, '', sub end
    if #prefix ~= 15 or prefix ~= string.sub(fp, 1, 15) then return nil end
    return 'issued', fp, issued, issued, '', sub
  end
  local state, f, i, c, idem, s = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|?(%x*)$')
  local consumed, late, file
  if not state then
    state, f, i, c, idem, s, consumed, late, file = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)|(%x*)|(%-?%d+)|([01])|([^|]*)|')
  end
  if not state then return nil end
  if fp ~= '' and not same_fingerprint(f, fp) then return nil end
  return state, f, i, c, idem, s, consumed, late, file
end
