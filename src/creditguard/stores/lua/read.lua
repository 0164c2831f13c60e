-- The shared state of one credential, after purging expired holds.
-- KEYS: snap, holds, exp, late
-- ARGV: now (epoch s), late_for (s)
-- Returns {held (micro-units), HGETALL snap}.

purge(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]))
return {held(KEYS[2]), redis.call('HGETALL', KEYS[1])}
