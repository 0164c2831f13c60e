-- Replace a hold with the call's real cost, once.
-- KEYS: snap, holds, exp, late
-- ARGV: hold id, cost (micro), keep_ms (expiry of a snapshot key created here)
-- Returns 1 when the hold was removed (and the cost debited), else 0.
--
-- The cost applies only if this call removes the hold: a retried or repeated
-- settle finds nothing and charges nothing. A hold that expired unsettled is
-- found in `late` (it no longer counts as held, but its cost is still owed).

local id = ARGV[1]
local removed = redis.call('HDEL', KEYS[2], id)
if removed == 1 then
    redis.call('ZREM', KEYS[3], id)
else
    removed = redis.call('ZREM', KEYS[4], id)
end
if removed == 1 and ARGV[2] ~= '0' then
    redis.call('HINCRBY', KEYS[1], 'debits', ARGV[2])
    if redis.call('PTTL', KEYS[1]) == -1 then
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
    end
end
return removed
