-- Count spend in a budget kept in the store (a FixedBudget inside Tightest),
-- once per id.
-- KEYS: spend, done
-- ARGV: id, cost (micro), bucket, spend keep_ms ('' = no expiry), now (epoch s), done_for (s)
-- Returns 1 when counted, 0 when this id was counted already.

local now, done_for = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[2], now + done_for, ARGV[1])
redis.call('PEXPIRE', KEYS[2], string.format('%d', math.ceil(done_for * 1000) + 1000))
if string.byte(ARGV[1], -1) % 16 == 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[2])
if ARGV[4] ~= '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
