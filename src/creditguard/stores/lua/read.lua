-- The shared state of one credential, after purging expired holds.
-- KEYS: snap, holds, late
-- ARGV: now (epoch s)
-- Returns {held (micro-units), HGETALL snap}.

local h = holds_state(KEYS[2], KEYS[3], tonumber(ARGV[1]))
return {h[1] or '0', redis.call('HGETALL', KEYS[1])}
