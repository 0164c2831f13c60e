-- Shared by read.lua and reserve.lua (the loader puts this text before theirs).
--
-- A credential's holds live in two keys: `holds` (hash: hold id -> amount in
-- micro-units) and `exp` (sorted set: hold id -> expiry, epoch seconds).
-- A hold whose expiry has passed stops counting: purge() moves it to `late`
-- (sorted set: hold id -> expiry) where a late settle still finds it, once,
-- for `late_for` seconds.

local function purge(holds, exp, late, now, late_for)
    local expired = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'WITHSCORES')
    if #expired > 0 then
        for i = 1, #expired, 2 do
            redis.call('HDEL', holds, expired[i])
            redis.call('ZADD', late, expired[i + 1], expired[i])
        end
        redis.call('ZREMRANGEBYSCORE', exp, '-inf', now)
        redis.call('PEXPIRE', late, string.format('%d', math.ceil(late_for * 1000) + 1000))
    end
    redis.call('ZREMRANGEBYSCORE', late, '-inf', '(' .. string.format('%.17g', now - late_for))
end

local function held(holds)
    local total = 0
    for _, amount in ipairs(redis.call('HVALS', holds)) do
        total = total + tonumber(amount)
    end
    return total
end
