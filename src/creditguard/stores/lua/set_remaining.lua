-- A provider told us the fresh remaining figure: it replaces the snapshot,
-- keeping the old one's total, unit and source; debits and exhaustion reset.
-- KEYS: snap
-- ARGV: remaining (micro), unlimited ('1'/'0'), fetched_at (epoch s), keep_ms

local snap = KEYS[1]
local old = redis.call('HMGET', snap, 'unlimited', 'total', 'used', 'unit', 'source')
local unit, source, total, used = 'credits', '', false, false
if old[1] then
    unit, source, total, used = old[4] or 'credits', old[5] or '', old[2], old[3]
    if total and used then
        if ARGV[2] == '1' then
            used = '0'
        else
            local spent = tonumber(total) - tonumber(ARGV[1])
            if spent < 0 then
                spent = 0
            end
            used = string.format('%d', spent)
        end
    end
end
redis.call('DEL', snap)
redis.call('HSET', snap,
    'unlimited', ARGV[2], 'remaining', ARGV[1], 'unit', unit, 'source', source,
    'fetched_at', ARGV[3], 'balance_at', ARGV[3], 'debits', '0', 'exhausted', '0')
if total then
    redis.call('HSET', snap, 'total', total)
end
if used then
    redis.call('HSET', snap, 'used', used)
end
redis.call('PEXPIRE', snap, ARGV[4])
