-- agent_deregister: remove an instance from the registry. Its inbox stays
-- readable (replay) until it expires after ARGV[2] seconds.
-- KEYS[1] agents zset  KEYS[2] agent hash  KEYS[3] inbox stream
-- KEYS[4] an instances-of-agent set, KEYS[5] an instances-of-job set: the
-- caller does not know the instance's type and job, so the script names the
-- right sets by replacing the last part of these (same tenant, same slot).
-- ARGV[1] instance id  ARGV[2] inbox retention (seconds)
-- Returns {'ok'} | {'missing'}

local v = redis.call('HMGET', KEYS[2], 'agent_id', 'job_id')
if not v[1] then return {'missing'} end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', (string.gsub(KEYS[4], '[^:]+$', v[1])), ARGV[1])
if v[2] and v[2] ~= '' then
  redis.call('SREM', (string.gsub(KEYS[5], '[^:]+$', v[2])), ARGV[1])
end
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {'ok'}
