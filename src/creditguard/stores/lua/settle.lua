-- Charge a call's real cost and drop its hold, once per id.
-- KEYS: snap, holds, exp, late, done, [spend]
-- ARGV: id, cost (micro), keep_ms (expiry of a snapshot key created here),
--       now (epoch s), done_for (s), [spend field, spend keep_ms ('' = no expiry)]
-- Returns 1 when the hold was there, 2 when it was not (the cost is charged
-- all the same: the hold vanished with a flushed or restarted Redis, or the id
-- is a debit of its own), 0 when this id was settled already (nothing charged).
--
-- `done` (sorted set: id -> until when it is remembered) makes a repeated
-- settle, e.g. one written back after a timeout that had in fact been
-- applied, charge nothing. A hold that expired unsettled is found in `late`.
-- `spend` (hash: window bucket -> micro) counts a local budget's spend.

local id, now, done_for = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local amount = redis.call('HGET', KEYS[2], id)
local status = 0
if amount then
    redis.call('HDEL', KEYS[2], id)
    if redis.call('HINCRBY', KEYS[2], '=', -tonumber(amount)) <= 0 then
        redis.call('HDEL', KEYS[2], '=')
    end
    status = 1
end
if status == 1 then
    redis.call('ZREM', KEYS[3], id)
else
    status = redis.call('ZREM', KEYS[4], id)
end
if status == 0 then
    if redis.call('ZSCORE', KEYS[5], id) then
        return 0
    end
    status = 2
end
redis.call('ZADD', KEYS[5], now + done_for, id)
redis.call('PEXPIRE', KEYS[5], string.format('%d', math.ceil(done_for * 1000) + 1000))
if string.byte(id, -1) % 16 == 0 then  -- forgotten ids go, on one settle in 16 or so
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
end
if ARGV[2] ~= '0' then
    if redis.call('HINCRBY', KEYS[1], 'debits', ARGV[2]) == tonumber(ARGV[2]) and
            redis.call('PTTL', KEYS[1]) == -1 then
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
    end
    if KEYS[6] then
        redis.call('HINCRBY', KEYS[6], ARGV[6], ARGV[2])
        if ARGV[7] ~= '' then
            redis.call('PEXPIRE', KEYS[6], ARGV[7])
        end
    end
end
return status
