-- agent_heartbeat: record that an instance is alive (and optionally its status).
-- @include common registry
-- @key agents the tenant's agents zset
-- @key agent the instance's hash
-- @arg instance the instance id
-- @arg status new status, or '' to keep it (a stale one becomes running)
-- @arg by_type registry index prefix by agent type (keys.rs)
-- @arg by_job registry index prefix by job
-- @arg by_status registry index prefix by status
-- @reply ok(status:text) the status it has now
-- @reply missing

local idx = registry_prefixes(ARGV[3], ARGV[4], ARGV[5])
if not idx then return redis.error_reply('ERR registry index prefixes must not be empty') end
if ARGV[2] ~= '' and not registry_statuses[ARGV[2]] then return redis.error_reply('ERR unknown status') end
local v = redis.call('HMGET', KEYS[2], 'agent_id', 'job_id', 'status')
if not v[1] then return {'missing'} end
local now = now_ms()
local status = ARGV[2]
if status == '' then
  status = v[3] or 'running'
  if status == 'stale' or status == 'starting' then status = 'running' end
end
if v[3] and v[3] ~= status then redis.call('ZREM', idx.status .. v[3], ARGV[1]) end
redis.call('HSET', KEYS[2], 'heartbeat_at', now, 'status', status)
redis.call('ZADD', KEYS[1], now, ARGV[1])
registry_index(idx, ARGV[1], v[1], v[2], status, now)
return {'ok', status}
