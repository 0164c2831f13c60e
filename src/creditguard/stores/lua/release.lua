-- Drop a hold without a charge.
-- KEYS: snap (unused, keeps the key list of the hold scripts), holds, exp, late, done
-- ARGV: hold id, now (epoch s), done_for (s)
-- Returns 1 when the hold was there, else 0.
--
-- The id is remembered in `done`: a settle of it later charges nothing.

local id = ARGV[1]
local amount = redis.call('HGET', KEYS[2], id)
local removed = 0
if amount then
    redis.call('HDEL', KEYS[2], id)
    if redis.call('HINCRBY', KEYS[2], '=', -tonumber(amount)) <= 0 then
        redis.call('HDEL', KEYS[2], '=')
    end
    removed = 1
end
if removed == 1 then
    redis.call('ZREM', KEYS[3], id)
else
    removed = redis.call('ZREM', KEYS[4], id)
end
if removed == 1 then
    local now, done_for = tonumber(ARGV[2]), tonumber(ARGV[3])
    redis.call('ZADD', KEYS[5], now + done_for, id)
    redis.call('PEXPIRE', KEYS[5], string.format('%d', math.ceil(done_for * 1000) + 1000))
end
return removed
