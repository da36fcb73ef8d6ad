-- agent_deregister: remove an instance from the registry and its indexes.
-- Its record is kept as `stopped` (renamed to the stopped record, indexed
-- by the time it stopped) and its inbox stays readable (replay), both until
-- they expire after `retention`; registering the instance again starts a
-- new record.
-- @include common registry
-- @key agents the tenant's agents zset
-- @key agent the instance's hash
-- @key inbox its inbox stream
-- @key stopped the instance's stopped record (a hash)
-- @key stopped_index the tenant's stopped instances (zset: instance -> ms stopped)
-- @key read_early its inbox's read-early zset (expires with the inbox)
-- @arg instance the instance id
-- @arg inbox_retention seconds the inbox and the stopped record are kept
-- @arg by_type registry index prefix by agent type (keys.rs)
-- @arg by_job registry index prefix by job
-- @arg by_status registry index prefix by status
-- @reply ok
-- @reply missing

arg_text(1)
local idx = registry_prefixes(ARGV[3], ARGV[4], ARGV[5])
if not idx then return redis.error_reply('ERR registry index prefixes must not be empty') end
local retention = arg_int(2, 1, 31536000)
local v = redis.call('HMGET', KEYS[2], 'agent_id', 'job_id', 'status')
if not v[1] then return {'missing'} end
local now = now_ms()
redis.call('RENAME', KEYS[2], KEYS[4])
redis.call('HSET', KEYS[4], 'status', 'stopped', 'stopped_at', now)
redis.call('EXPIRE', KEYS[4], retention)
redis.call('ZADD', KEYS[5], now, ARGV[1])
-- Records past their retention have expired: drop their index entries.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. int(now - retention * 1000))
redis.call('EXPIRE', KEYS[5], retention)
redis.call('ZREM', KEYS[1], ARGV[1])
registry_unindex(idx, ARGV[1], v[1], v[2], v[3])
redis.call('EXPIRE', KEYS[3], retention)
redis.call('EXPIRE', KEYS[6], retention)
return {'ok'}
