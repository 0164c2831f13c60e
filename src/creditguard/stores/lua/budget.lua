-- A budget the guard keeps itself (FixedBudget), counted in the store: the
-- snapshot becomes limit - the spend of the current window, atomically.
-- KEYS: snap, spend
-- ARGV: limit (micro), unit, source, now (epoch s), keep_ms,
--       lo, hi (the window's buckets), current bucket, spend keep_ms ('' = no expiry),
--       known (micro: the least spend this process saw in this window, '' none)
-- Returns the spend of the window (micro).
--
-- `spend` is a hash: bucket number -> micro spent; buckets below lo are
-- dropped. When Redis lost them (restarted empty, flushed), `known` puts back
-- what this process last saw, so that a restart never hands out a fresh budget.

local lo, hi = tonumber(ARGV[6]), tonumber(ARGV[7])
local spent = 0
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
    local bucket = tonumber(flat[i])
    if bucket == nil or bucket < lo then
        redis.call('HDEL', KEYS[2], flat[i])
    elseif bucket <= hi then
        spent = spent + tonumber(flat[i + 1])
    end
end
if ARGV[10] ~= '' and spent < tonumber(ARGV[10]) then
    redis.call('HINCRBY', KEYS[2], ARGV[8], string.format('%d', tonumber(ARGV[10]) - spent))
    spent = tonumber(ARGV[10])
    if ARGV[9] ~= '' then
        redis.call('PEXPIRE', KEYS[2], ARGV[9])
    end
end
local limit = tonumber(ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1],
    'unlimited', '0', 'remaining', string.format('%d', limit - spent), 'total', ARGV[1],
    'used', string.format('%d', spent), 'unit', ARGV[2], 'source', ARGV[3],
    'fetched_at', ARGV[4], 'balance_at', ARGV[4], 'debits', '0', 'exhausted', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return string.format('%d', spent)
