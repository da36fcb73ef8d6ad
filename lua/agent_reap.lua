-- agent_reap: mark instances silent since before the cutoff as stale.
-- Includes: common, registry
-- KEYS[1] agents zset
-- ARGV[1] cutoff (ms): heartbeats older than this are stale
-- ARGV[2] most instances examined in this call
-- ARGV[3] agent hash key prefix (the instance id is appended)
-- ARGV[4..6] registry index prefixes: by type, by job, by status
-- Agent hashes and indexes are named from these prefixes (same tenant, same slot).
-- Returns the number newly marked stale.

local cutoff = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
if not cutoff or not most or most < 1 then return redis.error_reply('ERR cutoff and most must be numbers') end
local idx = registry_prefixes(ARGV[4], ARGV[5], ARGV[6])
if not idx or ARGV[3] == '' then return redis.error_reply('ERR key prefixes must not be empty') end
local silent = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'WITHSCORES', 'LIMIT', 0, most)
local marked = 0
for i = 1, #silent, 2 do
  local instance, score = silent[i], silent[i + 1]
  local status = redis.call('HGET', ARGV[3] .. instance, 'status')
  if not status then
    redis.call('ZREM', KEYS[1], instance)
  elseif status ~= 'stale' and status ~= 'stopped' then
    redis.call('HSET', ARGV[3] .. instance, 'status', 'stale')
    redis.call('ZREM', idx.status .. status, instance)
    redis.call('ZADD', idx.status .. 'stale', score, instance)
    marked = marked + 1
  end
end
return marked
