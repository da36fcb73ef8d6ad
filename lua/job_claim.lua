-- job_claim: deliver up to COUNT new items of a running job to one consumer.
-- Checking the status here means a claim never reaches a job that is not running.
-- Includes: common, job
-- KEYS: the job layout (see include/job.lua).
-- ARGV[1..4]: event id base, tenant, job id, retention (job layout)
-- ARGV[5] consumer name (the worker instance id)
-- ARGV[6] maximum number of items
-- Returns {'ok', entry...} with entry = {id, {field, value, ...}}
--       | {'missing'} | {'not_running', status}

arg_text(5)
arg_int(6, 1, 100000)
local status = redis.call('HGET', K_JOB, 'status')
if not status then return {'missing'} end
if status ~= 'running' then return {'not_running', status} end

local out = {'ok'}
local r = redis.call('XREADGROUP', 'GROUP', GROUP, ARGV[5], 'COUNT', ARGV[6], 'STREAMS', K_ITEMS, '>')
if r then
  for _, entry in ipairs(r[1][2]) do out[#out + 1] = entry end
end
return out
