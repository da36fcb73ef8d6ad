-- job_claim: deliver up to `count` new items of a running job to one consumer.
-- Checking the status here means a claim never reaches a job that is not running.
-- @include common job
-- @layout job
-- @arg consumer the worker instance id
-- @arg count most items
-- @reply ok(entries:rest) each {id, {field, value, ...}}
-- @reply missing
-- @reply not_running(status:text)

arg_text(5)
arg_int(6, 1, 1000)
local status = redis.call('HGET', K_JOB, 'status')
if not status then return {'missing'} end
if not is_live(status) then return {'not_running', status} end

local out = {'ok'}
local r = redis.call('XREADGROUP', 'GROUP', GROUP, ARGV[5], 'COUNT', ARGV[6], 'STREAMS', K_ITEMS, '>')
if r then
  for _, entry in ipairs(r[1][2]) do out[#out + 1] = entry end
end
return out
