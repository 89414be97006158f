-- Discard (flagged allow-oom: it only deletes): the record of a signature that was never
-- handed out goes, if it still holds the value its issue wrote (ARGV[1]); a record another
-- signature wrote under the same nonce stays. Returns 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
