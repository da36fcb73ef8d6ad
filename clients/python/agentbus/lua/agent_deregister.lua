-- agent_deregister: remove an instance from the registry and its indexes.
-- Its inbox stays readable (replay) until it expires after `inbox_retention`.
-- @include common registry
-- @key agents the tenant's agents zset
-- @key agent the instance's hash
-- @key inbox its inbox stream
-- @arg instance the instance id
-- @arg inbox_retention seconds the inbox is kept
-- @arg by_type registry index prefix by agent type (keys.rs)
-- @arg by_job registry index prefix by job
-- @arg by_status registry index prefix by status
-- @reply ok
-- @reply missing

local idx = registry_prefixes(ARGV[3], ARGV[4], ARGV[5])
if not idx then return redis.error_reply('ERR registry index prefixes must not be empty') end
local retention = tonumber(ARGV[2])
if not retention or retention < 1 then return redis.error_reply('ERR retention must be >= 1') end
local v = redis.call('HMGET', KEYS[2], 'agent_id', 'job_id', 'status')
if not v[1] then return {'missing'} end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
registry_unindex(idx, ARGV[1], v[1], v[2], v[3])
redis.call('EXPIRE', KEYS[3], retention)
return {'ok'}
