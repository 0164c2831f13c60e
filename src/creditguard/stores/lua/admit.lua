-- Read one credential's state and hold an amount for a call, in one step.
-- KEYS: snap, holds, exp, late
-- ARGV: hold id (never reused), amount (micro, '0': hold nothing), floor (micro, '' for none),
--       now (epoch s), expires_at (epoch s),
--       fresh_after (epoch s: hold only on a snapshot stored at or after it; '' for any),
--       known (the snapshot's fetched_at the client has parsed already, '' for none)
-- Returns 'status held debits exhausted fetched_at' (held: before this hold,
-- micro), or {that, HGETALL snap} when the snapshot is not the one the client
-- knows; status is 1 held, 0 refused (the hold would take the headroom below
-- the floor), 2 nothing asked (amount 0), 3 not held: no snapshot fresh enough.
--
-- The hold and its expiry are written together: a crashed worker's holds stop
-- counting at their expiry, and the keys expire by themselves, LATE_FOR after
-- the last hold's expiry (a late settle still finds it). `holds` keeps in '^'
-- until when they live: their expiry is pushed back only when a hold would
-- outlive that (once a second at most), and `exp` keeps a member '' (score
-- -inf, never a hold) so that it lives on between holds with that expiry.

local holds, exp, amount = KEYS[2], KEYS[3], ARGV[2]
purge(holds, exp, KEYS[4], ARGV[4])
local h = redis.call('HMGET', holds, '=', '^')
local before = h[1] or '0'
local snap = redis.call('HMGET', KEYS[1], 'unlimited', 'remaining', 'debits', 'exhausted', 'fetched_at')

local status = 1
if ARGV[6] ~= '' and (not snap[1] or tonumber(snap[5]) < tonumber(ARGV[6])) then
    status = 3
elseif amount == '0' then
    status = 2
elseif ARGV[3] ~= '' and snap[1] and (snap[1] ~= '1' or snap[4] == '1') then
    -- (no snapshot, or an unlimited one: nothing to check against)
    local remaining = 0
    if snap[4] ~= '1' then
        remaining = tonumber(snap[2])
    end
    local after = remaining - tonumber(snap[3] or '0') - tonumber(before) - tonumber(amount)
    if after < tonumber(ARGV[3]) then
        status = 0
    end
end

if status == 1 then
    local sum = string.format('%d', tonumber(before) + tonumber(amount))
    local live = tonumber(ARGV[5]) + LATE_FOR
    if h[2] and tonumber(h[2]) >= live then
        redis.call('HSET', holds, ARGV[1], amount, '=', sum)
        redis.call('ZADD', exp, ARGV[5], ARGV[1])
    else
        live = live + 1
        redis.call('HSET', holds, ARGV[1], amount, '=', sum, '^', string.format('%.17g', live))
        redis.call('ZADD', exp, ARGV[5], ARGV[1], '-inf', '')
        local ttl = string.format('%d', math.ceil((live - tonumber(ARGV[4])) * 1000))
        redis.call('PEXPIRE', holds, ttl)
        redis.call('PEXPIRE', exp, ttl)
    end
end

local head = status .. ' ' .. before .. ' ' .. (snap[3] or '0') .. ' ' .. (snap[4] or '0') .. ' ' .. (snap[5] or '')
if snap[5] and snap[5] == ARGV[7] then
    return head
end
return {head, redis.call('HGETALL', KEYS[1])}
