-- job_enqueue: move the next chunk of a spawning job's staged inputs into its
-- items stream (as many as job_spawn's `chunk`); the call that moves the
-- last makes the job `running`. Any process may call it, any number at once:
-- each call pops its own inputs, and an item's index is the count enqueued
-- before it, so a spawner that died is resumed by whoever calls next.
-- @include common job
-- @layout job
-- @reply ok(enqueued:int, remaining:int, status:text) items in the stream so far, still staged, and the job's status after the call
-- @reply missing
-- @reply not_spawning(status:text)
-- @reply lost(enqueued:int) the staging list is gone though items remain (never written by agentbus)

local v = redis.call('HMGET', K_JOB, 'status', 'total', 'enqueued', 'chunk', 'gen')
local status = v[1]
if not status then return {'missing'} end
if status ~= 'spawning' then return {'not_spawning', status} end
local total, enqueued = tonumber(v[2]), tonumber(v[3]) or 0
local chunk, gen = tonumber(v[4]) or 1, v[5] or '1'

local inputs = redis.call('LPOP', K_STAGING, chunk)
if not inputs and enqueued < total then return {'lost', enqueued} end
local ts = now_ms()
-- The current gen: a retry during the spawn took a higher one, and entry
-- ids must keep growing.
for _, input in ipairs(inputs or {}) do
  redis.call('XADD', K_ITEMS, gen .. '-' .. enqueued, 'idx', enqueued, 'input', input)
  enqueued = enqueued + 1
end
redis.call('HSET', K_JOB, 'enqueued', enqueued, 'enqueued_at', ts)
if enqueued >= total then
  status = 'running'
  redis.call('HSET', K_JOB, 'status', status)
  redis.call('UNLINK', K_STAGING)
  job_summary(ts)
end
return {'ok', enqueued, total - enqueued, status}
