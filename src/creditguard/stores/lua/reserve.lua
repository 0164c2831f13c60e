-- Hold an amount for a call in flight, unless it takes the headroom below a floor.
-- KEYS: snap, holds, exp, late
-- ARGV: hold id, amount (micro), floor (micro, '' for none), now (epoch s),
--       expires_at (epoch s), late_for (s)
-- Returns 1 when held, 0 when refused.
--
-- The hold and its expiry are written here, together: a crashed worker's
-- holds stop counting at their expiry, and the keys expire by themselves.

local id, amount, floor = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now, late_for = tonumber(ARGV[4]), tonumber(ARGV[6])

purge(KEYS[2], KEYS[3], KEYS[4], now, late_for)

if floor ~= '' then
    local snap = redis.call('HMGET', KEYS[1], 'unlimited', 'remaining', 'debits', 'exhausted')
    local exhausted = snap[4] == '1'
    -- no snapshot, or an unlimited one: nothing to check against
    if snap[1] and (snap[1] ~= '1' or exhausted) then
        local remaining = 0
        if not exhausted then
            remaining = tonumber(snap[2])
        end
        local after = remaining - tonumber(snap[3] or '0') - held(KEYS[2]) - amount
        if after < tonumber(floor) then
            return 0
        end
    end
end

redis.call('HSET', KEYS[2], id, ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], id)
redis.call('ZREM', KEYS[4], id)
-- the hold keys outlive their last hold by late_for (a late settle finds it)
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
local ttl = string.format('%d', math.ceil((tonumber(last[2]) - now + late_for) * 1000) + 1000)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
