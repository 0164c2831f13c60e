-- Shared by settle.lua and release.lua (the loader puts this text before
-- theirs, after the constant DONE_FOR (seconds)).
--
-- A hold ends once, settled or released. Its id then goes to the set `done`
-- of its window (DONE_FOR seconds each; the set expires at the end of the
-- next one), so that a repeated settle, e.g. one written back after a timeout
-- that had in fact been applied, charges nothing for at least DONE_FOR
-- seconds. `holds` keeps in '~' the window whose set has its expiry already.
-- A hold that expired unsettled is found in `late` (see _holds.lua).

-- End hold `id` at `now` (epoch s) in window `window`: take it out of `holds`,
-- else out of `late`, and remember its id in `done` (this window's set).
-- Returns 1 when the hold was there, else 0 (nothing done); with `before` (the
-- set of the window before), an id found in neither set is remembered all
-- the same and 2 is returned (a settle whose hold vanished still charges).
local function end_hold(holds, late, done, before, id, now, window)
    local found = redis.call('HMGET', holds, id, '~')
    local hold = found[1]
    local status = 1
    if hold then
        redis.call('HDEL', holds, id)
        local amount = string.match(hold, '^%d+')
        if redis.call('HINCRBY', holds, '=', '-' .. amount) < 0 then
            redis.call('HSET', holds, '=', '0')
        end
    elseif redis.call('ZREM', late, id) == 0 then
        if not before or redis.call('SISMEMBER', done, id) == 1 or
                redis.call('SISMEMBER', before, id) == 1 then
            return 0
        end
        status = 2
    end
    redis.call('SADD', done, id)
    if found[2] ~= window then
        local ttl = math.ceil(((tonumber(window) + 2) * DONE_FOR - tonumber(now)) * 1000)
        redis.call('PEXPIRE', done, string.format('%d', ttl))
        if hold then  -- (holds keeps the key alive: only then can it carry '~')
            redis.call('HSET', holds, '~', window)
        end
    end
    return status
end
