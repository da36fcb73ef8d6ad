-- A consumer group's state, read with XINFO GROUPS (for the scripts that
-- need it; no other helper, so a hot-path script can take it alone).

-- `group` of `stream`: its pending count and last delivered id, or nil when
-- the stream has no such group. The stream must exist.
local function group_state(stream, group)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, pending, delivered
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1]
      elseif g[i] == 'pending' then pending = g[i + 1]
      elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
    end
    if name == group then return pending, delivered end
  end
  return nil
end
