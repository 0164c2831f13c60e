-- Drop a hold without a charge.
-- KEYS: snap (unused, keeps the key list of the hold scripts), holds, exp, late
-- ARGV: hold id, now (epoch s)
-- Returns 1 when the hold was there, else 0.
--
-- The id is remembered in `exp` (as settle.lua does): a settle of it later
-- charges nothing.

local holds, exp, id = KEYS[2], KEYS[3], ARGV[1]
local amount = redis.call('HGET', holds, id)
if amount then
    redis.call('HDEL', holds, id)
    if redis.call('HINCRBY', holds, '=', string.format('%d', -tonumber(amount))) < 0 then
        redis.call('HSET', holds, '=', '0')
    end
elseif redis.call('ZREM', KEYS[4], id) == 0 then
    return 0
end
redis.call('ZADD', exp, string.format('%.17g', -(tonumber(ARGV[2]) + DONE_FOR)), id)
if not amount and redis.call('PTTL', exp) < DONE_FOR * 1000 then  -- (as in settle.lua)
    redis.call('PEXPIRE', exp, string.format('%d', math.ceil(DONE_FOR * 1000) + 1000))
end
return 1
