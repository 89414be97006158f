-- Takes the abandonment sweep's lease, or renews it for the replica that holds it.
-- KEYS[1]: the lease. ARGV: the replica's name, the lease in milliseconds. Returns 1 if held.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
