-- Drop a hold without a charge.
-- KEYS: snap (unused, keeps the key list of the hold scripts), holds, late,
--       done (this window's), done (the window before: unused)
-- ARGV: hold id, now (epoch s), window (floor(now / DONE_FOR))
-- Returns 1 when the hold was there, else 0.
--
-- The id is remembered as settle.lua does (see _done.lua): a settle of it
-- later charges nothing.

return end_hold(KEYS[2], KEYS[3], KEYS[4], nil, ARGV[1], ARGV[2], ARGV[3])
