-- Record spend, with or without a snapshot.
-- KEYS: snap
-- ARGV: cost (micro), keep_ms (expiry if this creates the key)

redis.call('HINCRBY', KEYS[1], 'debits', ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
