-- Shared by settle.lua and release.lua (the loader puts this text before
-- theirs, after the constant DONE_FOR (seconds)).
--
-- A hold ends once, settled or released. Its id then goes to the set `done`
-- of its window (DONE_FOR seconds each; the set expires at the end of the
-- next one), so that a repeated settle, e.g. one written back after a timeout
-- that had in fact been applied, charges nothing for at least DONE_FOR
-- seconds. `holds` keeps in '~' the window whose set has its expiry already.
-- A hold that expired unsettled is found in `late` (see _holds.lua).

-- Take hold `id` out of `holds` (`hold`: its value there, read by the caller;
-- false when it is not there), else out of `late`. True when it was in either.
local function take_hold(holds, late, id, hold)
    if hold then
        redis.call('HDEL', holds, id)
        local amount = string.match(hold, '^%d+')
        if redis.call('HINCRBY', holds, '=', '-' .. amount) < 0 then
            redis.call('HSET', holds, '=', '0')
        end
        return true
    end
    return redis.call('ZREM', late, id) == 1
end

-- Remember `id` as ended in the set `done` of window `window` (now: epoch s;
-- `marked`: the window in '~', read by the caller with the hold; `held`: the
-- hold was in `holds`, which then keeps the key alive and can carry '~').
local function remember_done(holds, done, id, now, window, marked, held)
    redis.call('SADD', done, id)
    if marked ~= window then
        local ttl = math.ceil(((tonumber(window) + 2) * DONE_FOR - tonumber(now)) * 1000)
        redis.call('PEXPIRE', done, string.format('%d', ttl))
        if held then
            redis.call('HSET', holds, '~', window)
        end
    end
end
