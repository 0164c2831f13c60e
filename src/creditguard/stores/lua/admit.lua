-- Read one credential's state and hold an amount for a call, in one step.
-- KEYS: snap, holds, late
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
-- counting at their expiry, and the key expires by itself, LATE_FOR after the
-- last hold's expiry (a late settle still finds it): its expiry is pushed back
-- only when a hold would outlive '^' (once a second at most).

local holds, amount = KEYS[2], ARGV[2]
local h = holds_state(holds, KEYS[3], tonumber(ARGV[4]))
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
    local expires = tonumber(ARGV[5])
    local sum = string.format('%d', tonumber(before) + tonumber(amount))
    local hold = amount .. ' ' .. ARGV[5]
    local low = ARGV[5]
    if tonumber(h[2]) < expires then
        low = h[2]
    end
    local live = expires + LATE_FOR
    if h[3] and tonumber(h[3]) >= live then
        redis.call('HSET', holds, ARGV[1], hold, '=', sum, '<', low)
    else
        live = live + 1
        redis.call('HSET', holds, ARGV[1], hold, '=', sum, '<', low, '^', string.format('%.17g', live))
        redis.call('PEXPIRE', holds, string.format('%d', math.ceil((live - tonumber(ARGV[4])) * 1000)))
    end
end

local head = status .. ' ' .. before .. ' ' .. (snap[3] or '0') .. ' ' .. (snap[4] or '0') .. ' ' .. (snap[5] or '')
if snap[5] and snap[5] == ARGV[7] then
    return head
end
return {head, redis.call('HGETALL', KEYS[1])}
