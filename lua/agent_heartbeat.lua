-- agent_heartbeat: record that an instance is alive (and optionally its status).
-- Includes: common, registry
-- KEYS[1] agents zset   KEYS[2] agent hash
-- ARGV[1] instance id   ARGV[2] new status or '' to keep (a stale one becomes running)
-- ARGV[3..5] registry index prefixes: by type, by job, by status
-- Returns {'ok', status} | {'missing'}

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
