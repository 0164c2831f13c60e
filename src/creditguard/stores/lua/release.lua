-- Drop a hold without a charge.
-- KEYS: snap (unused, keeps the key list of the hold scripts), holds, late,
--       done (this window's), done (the window before: unused)
-- ARGV: hold id, now (epoch s), window (floor(now / DONE_FOR))
-- Returns 1 when the hold was there, else 0.
--
-- The id is remembered as settle.lua does: a settle of it later charges nothing.

local holds, id = KEYS[2], ARGV[1]
local hold = redis.call('HGET', holds, id)
if hold then
    redis.call('HDEL', holds, id)
    local amount = string.match(hold, '^%d+')
    if redis.call('HINCRBY', holds, '=', '-' .. amount) < 0 then
        redis.call('HSET', holds, '=', '0')
    end
elseif redis.call('ZREM', KEYS[3], id) == 0 then
    return 0
end
if redis.call('SADD', KEYS[4], id) == 1 and redis.call('PTTL', KEYS[4]) == -1 then
    local ttl = math.ceil(((tonumber(ARGV[3]) + 2) * DONE_FOR - tonumber(ARGV[2])) * 1000)
    redis.call('PEXPIRE', KEYS[4], string.format('%d', ttl))
end
return 1
