-- Charge a call's real cost and drop its hold, once per id.
-- KEYS: snap, holds, exp, late, [spend]
-- ARGV: id, cost (micro), now (epoch s), [spend field, spend keep_ms ('' = no expiry)]
-- Returns 1 when the hold was there, 2 when it was not (the cost is charged
-- all the same: the hold vanished with a flushed or restarted Redis, or the id
-- is a debit of its own), 0 when this id was settled already (nothing charged).
--
-- A settled id is remembered in `exp` for DONE_FOR seconds (score: minus until
-- when), so that a repeated settle, e.g. one written back after a timeout that
-- had in fact been applied, charges nothing. A hold that expired unsettled is
-- found in `late`. `spend` (hash: window bucket -> micro) counts a local
-- budget's spend.

local holds, exp, id, now = KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[3])
local amount = redis.call('HGET', holds, id)
local status = 1
if amount then
    redis.call('HDEL', holds, id)
    if redis.call('HINCRBY', holds, '=', string.format('%d', -tonumber(amount))) < 0 then
        redis.call('HSET', holds, '=', '0')
    end
elseif redis.call('ZREM', KEYS[4], id) == 0 then
    local seen = redis.call('ZSCORE', exp, id)
    if seen and tonumber(seen) < 0 then
        return 0
    end
    status = 2
end
redis.call('ZADD', exp, string.format('%.17g', -(now + DONE_FOR)), id)
-- (a hold still in `holds` kept `exp` alive for LATE_FOR past its expiry:
-- long enough to remember the id; else `exp` may be new, or near its end)
if not amount and redis.call('PTTL', exp) < DONE_FOR * 1000 then
    redis.call('PEXPIRE', exp, string.format('%d', math.ceil(DONE_FOR * 1000) + 1000))
end
if string.byte(id, -1) % 16 == 0 then  -- forgotten ids go, on one settle in 16 or so
    redis.call('ZREMRANGEBYSCORE', exp, '(' .. string.format('%.17g', -now), '(0')
end
if ARGV[2] ~= '0' then
    if redis.call('HINCRBY', KEYS[1], 'debits', ARGV[2]) == tonumber(ARGV[2]) and
            redis.call('PTTL', KEYS[1]) == -1 then
        redis.call('PEXPIRE', KEYS[1], ORPHAN_MS)
    end
    if KEYS[5] then
        redis.call('HINCRBY', KEYS[5], ARGV[4], ARGV[2])
        if ARGV[5] ~= '' then
            redis.call('PEXPIRE', KEYS[5], ARGV[5])
        end
    end
end
return status
