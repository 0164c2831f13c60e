-- A provider refused for lack of credits: the balance counts as empty until
-- the next snapshot. Without a snapshot, an empty one is created.
-- KEYS: snap
-- ARGV: now (epoch s), keep_ms (expiry if this creates the key)

local snap = KEYS[1]
if redis.call('HEXISTS', snap, 'unlimited') == 1 then
    redis.call('HSET', snap, 'exhausted', '1')
else
    redis.call('HSET', snap,
        'unlimited', '0', 'remaining', '0', 'unit', 'USD', 'source', 'provider refusal',
        'fetched_at', ARGV[1], 'balance_at', ARGV[1], 'exhausted', '1')
end
if redis.call('PTTL', snap) == -1 then
    redis.call('PEXPIRE', snap, ARGV[2])
end
