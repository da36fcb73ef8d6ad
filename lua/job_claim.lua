-- job_claim: deliver up to `count` new items of a running job to one
-- consumer, never putting more than the job's `parallelism` in flight
-- (delivered and not yet finished, failed or released: the group's pending
-- entries). Checking the status here means a claim never reaches a job that
-- is not running. Every delivery of a new item of a bounded job goes
-- through this script, so the bound holds however many workers claim at
-- once; a worker with nothing to claim waits outside it (XREAD BLOCK after
-- `empty`'s id, or a pause after `full`) and claims again. A job without a
-- bound may be waited on with XREADGROUP BLOCK itself (`bounded` 0), which
-- the job's end wakes. It writes no ledger or outbox: it takes
-- only the two keys it reads and one small helper, since it runs once per
-- read of a bounded job's workers (the hot path).
-- @include group
-- @key job the job hash
-- @key items the job's items stream (group 'workers')
-- @arg consumer the worker instance id
-- @arg count most items (1..1000)
-- @reply ok(entries:rest) each {id, {field, value, ...}} (at least one)
-- @reply empty(after:text, bounded:int) nothing new: new items will have ids after this one; bounded 1 when the job has a parallelism
-- @reply full(in_flight:int) `parallelism` items are in flight: none until one finishes
-- @reply missing
-- @reply not_running(status:text)

if (ARGV[1] or '') == '' then return redis.error_reply('ERR ARGV[1] must not be empty') end
local want = string.match(ARGV[2] or '', '^%d%d?%d?%d?$') and tonumber(ARGV[2])
if not want or want < 1 or want > 1000 then
  return redis.error_reply('ERR ARGV[2] must be an integer in [1, 1000]')
end
local job = redis.call('HMGET', KEYS[1], 'status', 'parallelism')
local status = job[1]
if not status then return {'missing'} end
if status ~= 'running' and status ~= 'spawning' then return {'not_running', status} end

-- The group's pending count and last delivered id (the job's only group).
local in_flight, last = group_state(KEYS[2], 'workers')
in_flight, last = in_flight or 0, last or '0-0'
local most = tonumber(job[2])
if most and most > 0 then
  if in_flight >= most then return {'full', in_flight} end
  want = math.min(want, most - in_flight)
end

local r = redis.call('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', want, 'STREAMS', KEYS[2], '>')
if not r or #r[1][2] == 0 then return {'empty', last, (most and most > 0) and 1 or 0} end
local out = {'ok'}
for _, entry in ipairs(r[1][2]) do out[#out + 1] = entry end
return out
