-- Extend the refresh lease while our token still holds it.
-- KEYS: lock
-- ARGV: token, ttl_ms
-- Returns 1 when renewed, 0 when the lease was lost.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
