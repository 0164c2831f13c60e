-- Replace the snapshot with a freshly fetched balance.
-- KEYS: snap
-- ARGV: remaining (micro), unlimited ('1'/'0'), total (micro or ''), used (micro or ''),
--       unit, source, fetched_at (epoch s), base_debits (micro), keep_ms,
--       the balance's own fetched_at (epoch s), resets_at (epoch s or '')
--
-- Spend recorded while the fetch ran is carried over: debits become
-- max(0, debits now - debits when the fetch started). Holds are not touched.

local snap = KEYS[1]
local carried = tonumber(redis.call('HGET', snap, 'debits') or '0') - tonumber(ARGV[8])
if carried < 0 then
    carried = 0
end
redis.call('DEL', snap)
redis.call('HSET', snap,
    'unlimited', ARGV[2], 'remaining', ARGV[1], 'unit', ARGV[5], 'source', ARGV[6],
    'fetched_at', ARGV[7], 'balance_at', ARGV[10], 'debits', string.format('%d', carried), 'exhausted', '0')
if ARGV[3] ~= '' then
    redis.call('HSET', snap, 'total', ARGV[3])
end
if ARGV[4] ~= '' then
    redis.call('HSET', snap, 'used', ARGV[4])
end
if ARGV[11] and ARGV[11] ~= '' then
    redis.call('HSET', snap, 'resets_at', ARGV[11])
end
redis.call('PEXPIRE', snap, ARGV[9])
