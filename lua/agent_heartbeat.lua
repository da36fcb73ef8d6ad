-- agent_heartbeat: record that an instance is alive (and optionally its status).
-- KEYS[1] agents zset   KEYS[2] agent hash
-- ARGV[1] instance id   ARGV[2] new status or '' to keep (a stale one becomes running)
-- Returns {'ok', status} | {'missing'}

if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing'} end
local now = now_ms()
local status = ARGV[2]
if status == '' then
  status = redis.call('HGET', KEYS[2], 'status')
  if status == 'stale' or status == 'starting' then status = 'running' end
end
redis.call('HSET', KEYS[2], 'heartbeat_at', now, 'status', status)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {'ok', status}
