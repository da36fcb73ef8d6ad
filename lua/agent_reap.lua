-- agent_reap: mark instances silent since before the cutoff as stale.
-- Agent hashes and indexes are named from the prefixes keys.rs passes (same
-- tenant, same slot).
-- @include common registry
-- @key agents the tenant's agents zset
-- @arg cutoff ms: heartbeats older than this are stale
-- @arg most instances examined in this call
-- @arg agent_prefix agent hash key prefix (the instance id is appended)
-- @arg by_type registry index prefix by agent type
-- @arg by_job registry index prefix by job
-- @arg by_status registry index prefix by status
-- @returns int the number newly marked stale

local cutoff = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
if not cutoff or not most or most < 1 then return redis.error_reply('ERR cutoff and most must be numbers') end
local idx = registry_prefixes(ARGV[4], ARGV[5], ARGV[6])
if not idx or ARGV[3] == '' then return redis.error_reply('ERR key prefixes must not be empty') end
-- Through the live statuses' indexes (scored by heartbeat), so instances
-- already stale or stopped are never read again however many there are.
local marked, left = 0, most
for _, live in ipairs({'starting', 'running', 'idle'}) do
  if left < 1 then break end
  local silent = redis.call('ZRANGEBYSCORE', idx.status .. live, '-inf', '(' .. ARGV[1], 'WITHSCORES', 'LIMIT', 0, left)
  for i = 1, #silent, 2 do
    local instance, score = silent[i], silent[i + 1]
    left = left - 1
    local status = redis.call('HGET', ARGV[3] .. instance, 'status')
    if not status then
      redis.call('ZREM', KEYS[1], instance)
      redis.call('ZREM', idx.status .. live, instance)
    elseif status ~= 'stale' and status ~= 'stopped' then
      redis.call('HSET', ARGV[3] .. instance, 'status', 'stale')
      redis.call('ZREM', idx.status .. status, instance)
      redis.call('ZADD', idx.status .. 'stale', score, instance)
      marked = marked + 1
    else
      -- An index out of step with the hash: the hash decides.
      redis.call('ZREM', idx.status .. live, instance)
    end
  end
end
return marked
