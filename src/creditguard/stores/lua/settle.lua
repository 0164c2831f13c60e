-- Charge a call's real cost and drop its hold, once per id.
-- KEYS: snap, holds, late, done (this window's), done (the window before), spend...
-- ARGV: id, cost (micro), now (epoch s), window (floor(now / DONE_FOR)),
--       then for each spend key: its field, its keep_ms ('' = no expiry)
-- Returns 1 when the hold was there, 2 when it was not (the cost is charged
-- all the same: the hold vanished with a flushed or restarted Redis, or the id
-- is a debit of its own), 0 when this id was settled already (nothing charged:
-- see _done.lua).
--
-- Each `spend` (hash: window bucket -> micro) counts a budget's spend (a
-- FixedBudget the guard keeps, and those inside Tightest): counted once, with
-- the settle.

local status = end_hold(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[3], ARGV[4])
if status == 0 then
    return 0
end
if ARGV[2] ~= '0' then
    if redis.call('HINCRBY', KEYS[1], 'debits', ARGV[2]) == tonumber(ARGV[2]) and
            redis.call('PTTL', KEYS[1]) == -1 then
        redis.call('PEXPIRE', KEYS[1], ORPHAN_MS)
    end
    for i = 6, #KEYS do
        local field, keep = ARGV[2 * i - 7], ARGV[2 * i - 6]
        redis.call('HINCRBY', KEYS[i], field, ARGV[2])
        if keep ~= '' then
            redis.call('PEXPIRE', KEYS[i], keep)
        end
    end
end
return status
