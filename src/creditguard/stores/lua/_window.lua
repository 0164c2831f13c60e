-- Shared by window.lua and budget.lua (the loader puts this text before theirs).
--
-- A budget kept in the store counts its spend in a hash, `spend`: window
-- bucket number -> micro spent.

-- The spend of `spend` over buckets lo..hi (micro, a number); buckets below lo
-- are dropped. When Redis lost part of it (restarted empty, flushed), `known`
-- (micro: the least spend this process saw in this window; nil or '' for
-- none) puts the difference back in bucket `bucket`, keeping the key `keep`
-- ms ('' = no expiry), so that the budget is never handed out afresh.
local function window_spend(spend, lo, hi, known, bucket, keep)
    lo, hi = tonumber(lo), tonumber(hi)
    local spent = 0
    local flat = redis.call('HGETALL', spend)
    for i = 1, #flat, 2 do
        local at = tonumber(flat[i])
        if at == nil or at < lo then
            redis.call('HDEL', spend, flat[i])
        elseif at <= hi then
            spent = spent + tonumber(flat[i + 1])
        end
    end
    if known and known ~= '' and spent < tonumber(known) then
        redis.call('HINCRBY', spend, bucket, string.format('%d', tonumber(known) - spent))
        spent = tonumber(known)
        if keep ~= '' then
            redis.call('PEXPIRE', spend, keep)
        end
    end
    return spent
end
