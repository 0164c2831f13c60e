-- The spend of a budget kept in the store over its current window.
-- KEYS: spend
-- ARGV: lo, hi (the window's buckets)
-- Returns the spend (micro); buckets below lo are dropped.

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
return string.format('%d', spent)
