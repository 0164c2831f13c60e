-- A budget the guard keeps itself (FixedBudget), counted in the store: the
-- snapshot becomes limit - the spend of the current window, atomically.
-- KEYS: snap, spend
-- ARGV: limit (micro), unit, source, now (epoch s), keep_ms,
--       lo, hi (the window's buckets), current bucket, spend keep_ms ('' = no expiry),
--       known (micro: the least spend this process saw in this window, '' none)
-- Returns the spend of the window (micro); see window_spend() in _window.lua:
-- a restart never hands out a fresh budget.

local spent = window_spend(KEYS[2], ARGV[6], ARGV[7], ARGV[10], ARGV[8], ARGV[9])
local limit = tonumber(ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1],
    'unlimited', '0', 'remaining', string.format('%d', limit - spent), 'total', ARGV[1],
    'used', string.format('%d', spent), 'unit', ARGV[2], 'source', ARGV[3],
    'fetched_at', ARGV[4], 'balance_at', ARGV[4], 'debits', '0', 'exhausted', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return string.format('%d', spent)
