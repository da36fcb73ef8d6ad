-- agent_register: register (or re-register) an agent instance and create its inbox.
-- KEYS[1] agents zset (instance -> last heartbeat ms)
-- KEYS[2] agent hash             KEYS[3] inbox stream
-- KEYS[4] instances-of-agent set KEYS[5] instances-of-job set ('' key when no job)
-- ARGV[1] instance id  ARGV[2] agent id  ARGV[3] job id or ''
-- ARGV[4] capabilities (JSON text)  ARGV[5] status
-- ARGV[6] most instances the tenant may have registered (a new one past it is refused)
-- Returns {'ok', registered_at} or {'limit', registered}; the limit is
-- checked before the first write.

local max = tonumber(ARGV[6])
if not max or max < 1 then return redis.error_reply('ERR most instances must be a number >= 1') end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= max then return {'limit', n} end
end
local now = now_ms()
local old_job = redis.call('HGET', KEYS[2], 'job_id')
local registered_at = redis.call('HGET', KEYS[2], 'registered_at') or now
redis.call('HSET', KEYS[2], 'instance_id', ARGV[1], 'agent_id', ARGV[2], 'job_id', ARGV[3],
  'capabilities', ARGV[4], 'status', ARGV[5], 'registered_at', registered_at, 'heartbeat_at', now)
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
if ARGV[3] ~= '' then redis.call('SADD', KEYS[5], ARGV[1]) end
if old_job and old_job ~= '' and old_job ~= ARGV[3] then
  -- Moved to another job: leave the old job's set (same tenant, same slot).
  redis.call('SREM', (string.gsub(KEYS[5], '[^:]+$', old_job)), ARGV[1])
end
ensure_inbox(KEYS[3])
redis.call('PERSIST', KEYS[3])
return {'ok', registered_at}
