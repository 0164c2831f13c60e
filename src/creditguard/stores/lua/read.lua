-- The shared state of one credential, after purging expired holds.
-- KEYS: snap, holds, exp, late
-- ARGV: now (epoch s)
-- Returns {held (micro-units), HGETALL snap}.

purge(KEYS[2], KEYS[3], KEYS[4], ARGV[1])
return {redis.call('HGET', KEYS[2], '=') or '0', redis.call('HGETALL', KEYS[1])}
