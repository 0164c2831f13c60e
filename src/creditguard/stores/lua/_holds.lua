-- Shared by read.lua and admit.lua (the loader puts this text before theirs,
-- after the constants LATE_FOR, DONE_FOR (seconds) and ORPHAN_MS).
--
-- A credential's holds live in one hash, `holds`: hold id -> 'amount expiry'
-- (micro-units, epoch seconds), and '=' -> the sum of the amounts, '<' -> no
-- hold expires before this (epoch seconds; '1e308': no hold), '^' -> until when
-- the key lives, '~' -> see _done.lua. A hold whose expiry has passed stops
-- counting: holds_state() moves it to `late` (sorted set: hold id -> expiry) where a
-- late settle still finds it, once, for LATE_FOR seconds. It runs only when
-- '<' says a hold may have expired: once per hold timeout, or as holds expire.

local NONE = '1e308'

-- The holds' state: {sum, '<', '^'} (purged first when a hold may have expired).
local function holds_state(holds, late, now)
    local h = redis.call('HMGET', holds, '=', '<', '^')
    if h[2] and tonumber(h[2]) > now then
        return h
    end
    local all = redis.call('HGETALL', holds)
    local gone, low = 0, nil
    for i = 1, #all, 2 do
        local amount, expiry = string.match(all[i + 1], '^(%d+) (%S+)$')
        if amount then  -- (a hold: the other fields are '=', '<', '^', '~')
            local at = tonumber(expiry)
            if at <= now then
                gone = gone + tonumber(amount)
                redis.call('HDEL', holds, all[i])
                redis.call('ZADD', late, expiry, all[i])
            elseif not low or at < low then
                low = at
            end
        end
    end
    if gone > 0 then
        local sum = redis.call('HINCRBY', holds, '=', string.format('%d', -gone))
        if sum <= 0 then
            redis.call('HDEL', holds, '=')
            sum = 0
        end
        h[1] = string.format('%d', sum)
        redis.call('PEXPIRE', late, string.format('%d', math.ceil(LATE_FOR * 1000) + 1000))
        redis.call('ZREMRANGEBYSCORE', late, '-inf', '(' .. string.format('%.17g', now - LATE_FOR))
    end
    h[2] = low and string.format('%.17g', low) or NONE
    if h[3] then  -- (a key made by admit.lua, with its expiry: never one made here)
        redis.call('HSET', holds, '<', h[2])
    end
    return h
end
