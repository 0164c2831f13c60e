-- The spend of a budget kept in the store over its current window.
-- KEYS: spend
-- ARGV: lo, hi (the window's buckets), [known (micro: the least spend this
--       process saw in this window), current bucket, keep_ms ('' = no expiry)]
-- Returns the spend (micro); buckets below lo are dropped. When Redis lost
-- part of it (restarted empty, flushed), `known` puts back what this process
-- saw, so that the budget is never handed out afresh.

local lo, hi = tonumber(ARGV[1]), tonumber(ARGV[2])
local spent = 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
    local bucket = tonumber(flat[i])
    if bucket == nil or bucket < lo then
        redis.call('HDEL', KEYS[1], flat[i])
    elseif bucket <= hi then
        spent = spent + tonumber(flat[i + 1])
    end
end
if ARGV[3] and ARGV[3] ~= '' and spent < tonumber(ARGV[3]) then
    redis.call('HINCRBY', KEYS[1], ARGV[4], string.format('%d', tonumber(ARGV[3]) - spent))
    spent = tonumber(ARGV[3])
    if ARGV[5] ~= '' then
        redis.call('PEXPIRE', KEYS[1], ARGV[5])
    end
end
return string.format('%d', spent)
