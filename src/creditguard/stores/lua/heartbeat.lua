-- A worker says it is alive; returns how many were seen alive lately.
-- KEYS: workers (sorted set: worker id -> last seen, epoch s)
-- ARGV: worker id, now (epoch s), alive_for (s)

local now, alive_for = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', now - alive_for))
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(alive_for * 1000) + 1000))
return redis.call('ZCARD', KEYS[1])
