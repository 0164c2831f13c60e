-- Free the refresh lock only if our token still holds it (it may have
-- expired and been taken by another worker meanwhile).
-- KEYS: lock
-- ARGV: token

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
