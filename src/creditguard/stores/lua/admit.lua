-- Read one credential's state and hold an amount for a call, in one step.
-- KEYS: snap, holds, exp, late
-- ARGV: hold id, amount (micro, '0': hold nothing), floor (micro, '' for none),
--       now (epoch s), expires_at (epoch s), late_for (s),
--       fresh_after (epoch s: hold only on a snapshot stored at or after it; '' for any),
--       known (the snapshot's fetched_at the client has parsed already, '' for none)
-- Returns {status, held before this hold (micro), debits, exhausted, fetched_at,
-- HGETALL snap (empty when the snapshot is the one the client knows)}; status is
-- 1 held, 0 refused (the hold would take the headroom below the floor),
-- 2 nothing asked (amount 0), 3 not held: no snapshot fresh enough.
--
-- The hold and its expiry are written together: a crashed worker's holds stop
-- counting at their expiry, and the keys expire by themselves.

local id, amount, floor = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now, late_for = tonumber(ARGV[4]), tonumber(ARGV[6])

purge(KEYS[2], KEYS[3], KEYS[4], now, late_for)
local before = held(KEYS[2])
local snap = redis.call('HMGET', KEYS[1], 'unlimited', 'remaining', 'debits', 'exhausted', 'fetched_at')
local flat = {}
if not (snap[5] and snap[5] == ARGV[8]) then
    flat = redis.call('HGETALL', KEYS[1])
end
local function reply(status)
    return {status, before, snap[3] or '0', snap[4] or '0', snap[5] or '', flat}
end

if ARGV[7] ~= '' and (not snap[1] or tonumber(snap[5]) < tonumber(ARGV[7])) then
    return reply(3)
end
if amount == 0 then
    return reply(2)
end
if floor ~= '' then
    local exhausted = snap[4] == '1'
    -- no snapshot, or an unlimited one: nothing to check against
    if snap[1] and (snap[1] ~= '1' or exhausted) then
        local remaining = 0
        if not exhausted then
            remaining = tonumber(snap[2])
        end
        local after = remaining - tonumber(snap[3] or '0') - before - amount
        if after < tonumber(floor) then
            return reply(0)
        end
    end
end

redis.call('HSET', KEYS[2], id, ARGV[2])
redis.call('HINCRBY', KEYS[2], '=', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], id)
redis.call('ZREM', KEYS[4], id)
-- the hold keys outlive their last hold by late_for (a late settle finds it)
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
local ttl = string.format('%d', math.ceil((tonumber(last[2]) - now + late_for) * 1000) + 1000)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return reply(1)
