-- Shared by read.lua and admit.lua (the loader puts this text before theirs).
--
-- A credential's holds live in two keys: `holds` (hash: hold id -> amount in
-- micro-units, and '=' -> their sum) and `exp` (sorted set: hold id -> expiry,
-- epoch seconds). A hold whose expiry has passed stops counting: purge() moves
-- it to `late` (sorted set: hold id -> expiry) where a late settle still finds
-- it, once, for `late_for` seconds.

local function purge(holds, exp, late, now, late_for)
    local expired = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'WITHSCORES')
    if #expired > 0 then
        local gone = 0
        for i = 1, #expired, 2 do
            gone = gone + tonumber(redis.call('HGET', holds, expired[i]) or '0')
            redis.call('HDEL', holds, expired[i])
            redis.call('ZADD', late, expired[i + 1], expired[i])
        end
        if redis.call('HINCRBY', holds, '=', -gone) <= 0 then
            redis.call('HDEL', holds, '=')
        end
        redis.call('ZREMRANGEBYSCORE', exp, '-inf', now)
        redis.call('PEXPIRE', late, string.format('%d', math.ceil(late_for * 1000) + 1000))
        redis.call('ZREMRANGEBYSCORE', late, '-inf', '(' .. string.format('%.17g', now - late_for))
    end
end

local function held(holds)
    return tonumber(redis.call('HGET', holds, '=') or '0')
end
