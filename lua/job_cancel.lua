-- job_cancel: stop a running (or spawning) job at once and refund every
-- uncompleted item, staged ones included. After this call no item is
-- delivered (end_job unlinks the items stream, its group and any staged
-- inputs) and late completions are refused by the status check. Its work
-- does not grow with the job's size.
-- @include common job
-- @layout job
-- @arg cancelled_by who cancelled it
-- @arg reason why
-- @reply ok(completed:int, cancelled:int, refunded:int, lasted_ms:int)
-- @reply missing
-- @reply not_running(status:text)

local v = redis.call('HMGET', K_JOB, 'status', 'item_cost', 'total', 'completed', 'failed')
local status, cost = v[1], tonumber(v[2])
if not status then return {'missing'} end
if not is_live(status) then return {'not_running', status} end

local total, completed, failed = tonumber(v[3]), tonumber(v[4]), tonumber(v[5])
local cancelled = total - completed - failed
local refund = cancelled * cost
local ts = now_ms()

redis.call('HSET', K_JOB, 'cancelled', cancelled, 'cancelled_by', ARGV[5], 'cancel_reason', ARGV[6])
redis.call('HINCRBY', K_JOB, 'refunded', int(refund))
move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, JOB_ID, 'refund', 'job_item', refund,
  {reason = 'job_cancelled', items = cancelled})
redis.call('XADD', K_OUTBOX, '*', 'type', 'cancel', 'id', next_event_id(EVENT_BASE), 'ts', ts,
  'tenant', TENANT, 'job', JOB_ID, 'cancelled_by', ARGV[5], 'reason', ARGV[6],
  'items_completed', completed, 'items_cancelled', cancelled, 'refunded', int(refund))
local lasted = end_job('cancelled', ts)
return {'ok', completed, cancelled, int(refund), lasted}
