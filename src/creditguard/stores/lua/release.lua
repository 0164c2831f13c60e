-- Drop a hold without a charge.
-- KEYS: snap (unused, keeps the key list of the hold scripts), holds, late,
--       done (this window's), done (the window before: unused)
-- ARGV: hold id, now (epoch s), window (floor(now / DONE_FOR))
-- Returns 1 when the hold was there, else 0.
--
-- The id is remembered as settle.lua does (see _done.lua): a settle of it
-- later charges nothing.

local holds, id = KEYS[2], ARGV[1]
local found = redis.call('HMGET', holds, id, '~')
if not take_hold(holds, KEYS[3], id, found[1]) then
    return 0
end
remember_done(holds, KEYS[4], id, ARGV[2], ARGV[3], found[2], found[1])
return 1
