-- Messages marked read before they were delivered (the inbox's read-early
-- zset: entry id -> its milliseconds). A reader that is handed one of them
-- acknowledges it and drops it instead of handling it.

-- Checks that ARGV is 1 to `most` stream entry ids (before any write).
local function entry_id_args(most)
  if #ARGV < 1 then error({err = 'ERR ARGV[1] missing: at least one entry id'}) end
  if #ARGV > most then
    error({err = 'ERR ARGV[' .. (most + 1) .. '] is past the most entry ids a call takes (' .. most .. ')'})
  end
  for i = 1, #ARGV do
    if not string.match(ARGV[i], '^%d+%-%d+$') or string.len(ARGV[i]) > 41 then
      error({err = 'ERR ARGV[' .. i .. '] must be a stream entry id'})
    end
  end
end

-- Of `ids` (entry ids just delivered from `inbox`), acknowledges and forgets
-- those marked read early; returns them as a set (id -> true). Costs one
-- ZCARD when nothing was marked.
local function settle_read_early(inbox, read_early, ids)
  local settled = {}
  if #ids == 0 or redis.call('ZCARD', read_early) == 0 then return settled end
  -- ZMSCORE in slices: unpack has a bound on how many values it spreads.
  for from = 1, #ids, 1000 do
    local slice = {unpack(ids, from, math.min(from + 999, #ids))}
    local scores = redis.call('ZMSCORE', read_early, unpack(slice))
    for i, id in ipairs(slice) do
      if scores[i] then
        redis.call('XACK', inbox, 'inbox', id)
        redis.call('ZREM', read_early, id)
        settled[id] = true
      end
    end
  end
  return settled
end
