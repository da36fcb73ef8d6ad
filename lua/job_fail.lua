-- job_fail: a worker reports an item failed. With retry and attempts left the
-- item is re-queued; otherwise it fails for good (dead letter, credits
-- released). `ended`, `status`: how long the job lasted (ms) and how it
-- ended, when this failure ended it, else 0 and ''.
-- @include common job
-- @layout job
-- @arg entry the item's entry id
-- @arg error error message
-- @arg retry '1' or '0'
-- @reply retried(attempt:int)
-- @reply failed(ended:int, status:text)
-- @reply duplicate
-- @reply stale
-- @reply invalid
-- @reply missing
-- @reply not_running(status:text)

arg_one_of(7, {['0'] = true, ['1'] = true})
local v = redis.call('HMGET', K_JOB, 'status', 'item_cost', 'total', 'max_retries')
local status, cost, total, max_retries = v[1], tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
if not status then return {'missing'} end
if not is_live(status) then return {'not_running', status} end

local entry_id, message, retry = ARGV[5], ARGV[6], ARGV[7] == '1'
local idx = item_index(entry_id)
if not idx or idx >= total then return {'invalid'} end
if redis.call('GETBIT', K_DONE, idx) == 1 then return {'duplicate'} end
if not is_pending(entry_id) then return {'stale'} end
local f = entry_fields(entry_id)
if not f then return {'stale'} end

local ts = now_ms()
local attempt = attempt_of(f)
if retry and attempt < max_retries then
  requeue(entry_id, idx, f, message, ts)
  return {'retried', attempt + 1}
end
fail_item(entry_id, idx, f, message, ts, cost)
local ended, ended_status = finish_if_done(ts)
return {'failed', ended, ended_status}
