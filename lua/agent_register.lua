-- agent_register: register (or re-register) an agent instance and create its
-- inbox. Everything is checked before the first write.
-- @include common registry
-- @key agents the tenant's agents zset (instance -> last heartbeat ms)
-- @key agent the instance's hash
-- @key inbox its inbox stream
-- @key read_early its inbox's read-early zset (kept as long as the inbox)
-- @arg instance the instance id
-- @arg agent the agent (type) id
-- @arg job job id or ''
-- @arg capabilities JSON text
-- @arg status its status
-- @arg most_instances most instances the tenant may have (a new one past it is refused)
-- @arg by_type registry index prefix by agent type (keys.rs)
-- @arg by_job registry index prefix by job
-- @arg by_status registry index prefix by status
-- @reply ok(registered_at:int) ms
-- @reply limit(registered:int) how many the tenant has

local max = tonumber(ARGV[6])
if not max or max < 1 then return redis.error_reply('ERR most instances must be a number >= 1') end
local idx = registry_prefixes(ARGV[7], ARGV[8], ARGV[9])
if not idx then return redis.error_reply('ERR registry index prefixes must not be empty') end
if ARGV[1] == '' or ARGV[2] == '' then return redis.error_reply('ERR instance and agent ids must not be empty') end
if not registry_statuses[ARGV[5]] then return redis.error_reply('ERR unknown status') end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= max then return {'limit', n} end
end
local now = now_ms()
local old = redis.call('HMGET', KEYS[2], 'agent_id', 'job_id', 'status', 'registered_at')
local registered_at = old[4] or now
-- Re-registering may change type, job or status: leave the old indexes.
registry_unindex(idx, ARGV[1], old[1], old[2], old[3])
redis.call('HSET', KEYS[2], 'instance_id', ARGV[1], 'agent_id', ARGV[2], 'job_id', ARGV[3],
  'capabilities', ARGV[4], 'status', ARGV[5], 'registered_at', registered_at, 'heartbeat_at', now)
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
registry_index(idx, ARGV[1], ARGV[2], ARGV[3], ARGV[5], now)
ensure_inbox(KEYS[3])
redis.call('PERSIST', KEYS[3])
redis.call('PERSIST', KEYS[4])
return {'ok', registered_at}
