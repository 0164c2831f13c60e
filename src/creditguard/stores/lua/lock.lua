-- Take the refresh lease if it is free.
-- KEYS: lock
-- ARGV: token, ttl_ms
-- Returns 1 when taken, 0 when another worker holds it.

if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return 0
