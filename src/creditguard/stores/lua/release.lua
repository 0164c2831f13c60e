-- Drop a hold without a charge.
-- KEYS: snap (unused, keeps the key list of the hold scripts), holds, exp, late
-- ARGV: hold id
-- Returns 1 when the hold was there, else 0.

local id = ARGV[1]
local removed = redis.call('HDEL', KEYS[2], id)
if removed == 1 then
    redis.call('ZREM', KEYS[3], id)
else
    removed = redis.call('ZREM', KEYS[4], id)
end
return removed
