-- Shared by read.lua and admit.lua (the loader puts this text before theirs,
-- after the constants LATE_FOR, DONE_FOR (seconds) and ORPHAN_MS).
--
-- A credential's holds live in two keys: `holds` (hash: hold id -> amount in
-- micro-units, and '=' -> their sum) and `exp` (sorted set: hold id -> expiry,
-- epoch seconds). A hold whose expiry has passed stops counting: purge() moves
-- it to `late` (sorted set: hold id -> expiry) where a late settle still finds
-- it, once, for LATE_FOR seconds.
-- (`exp` also has a member '' at -inf: see admit.lua.)

local function purge(holds, exp, late, now)
    local expired = redis.call('ZRANGEBYSCORE', exp, 0, now, 'WITHSCORES')
    if #expired > 0 then
        local gone = 0
        for i = 1, #expired, 2 do
            gone = gone + tonumber(redis.call('HGET', holds, expired[i]) or '0')
            redis.call('HDEL', holds, expired[i])
            redis.call('ZADD', late, expired[i + 1], expired[i])
        end
        if redis.call('HINCRBY', holds, '=', string.format('%d', -gone)) <= 0 then
            redis.call('HDEL', holds, '=')
        end
        redis.call('ZREMRANGEBYSCORE', exp, 0, now)
        redis.call('PEXPIRE', late, string.format('%d', math.ceil(LATE_FOR * 1000) + 1000))
        redis.call('ZREMRANGEBYSCORE', late, '-inf', '(' .. string.format('%.17g', tonumber(now) - LATE_FOR))
    end
end
