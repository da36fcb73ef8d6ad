-- agent_reap: mark instances silent since before the cutoff as stale.
-- KEYS[1] agents zset
-- ARGV[1] cutoff (ms): heartbeats older than this are stale
-- ARGV[2] most instances examined in this call
-- Agent hashes are derived from KEYS[1] (same tenant, same slot).
-- Returns the number newly marked stale.

local base = string.sub(KEYS[1], 1, #KEYS[1] - #'agents')
local silent = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local marked = 0
for _, instance in ipairs(silent) do
  local key = base .. 'agent:' .. instance
  local status = redis.call('HGET', key, 'status')
  if not status then
    redis.call('ZREM', KEYS[1], instance)
  elseif status ~= 'stale' and status ~= 'stopped' then
    redis.call('HSET', key, 'status', 'stale')
    marked = marked + 1
  end
end
return marked
