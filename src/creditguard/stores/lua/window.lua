-- The spend of a budget kept in the store over its current window.
-- KEYS: spend
-- ARGV: lo, hi (the window's buckets), [known (micro: the least spend this
--       process saw in this window), current bucket, keep_ms ('' = no expiry)]
-- Returns the spend (micro); see window_spend() in _window.lua.

return string.format('%d', window_spend(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]))
