-- dlq_replay_item: replay a dead-lettered item of a live job: it goes out
-- again as a new attempt of the same item (same index and input), its price
-- reserved again — all or nothing — and its dead letter removed, so it is
-- replayed exactly once. An item of a job that has ended is refused
-- (`not_running`): the job's accounting is closed.
-- @include common job
-- @layout job
-- @arg entry the dead letter's entry id
-- @reply ok(item_id:text, item_index:int) the new delivery's id and the item's index
-- @reply missing the dead letter is gone (replayed already)
-- @reply not_an_item(type:text)
-- @reply other_job the dead letter is of another job
-- @reply not_running(status:text)
-- @reply insufficient(required:int, available:int)

local entry = arg_text(5)
local r = redis.call('XRANGE', K_DLQ, entry, entry)
if #r == 0 then return {'missing'} end
local f = {}
local kv = r[1][2]
for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
if f.type ~= 'item' then return {'not_an_item', f.type or ''} end
if f.job ~= JOB_ID then return {'other_job'} end
local v = redis.call('HMGET', K_JOB, 'status', 'item_cost', 'total', 'failed')
local status, cost, total, failed = v[1], tonumber(v[2]), tonumber(v[3]), tonumber(v[4]) or 0
if not status then return {'not_running', 'expired'} end
if not is_live(status) then return {'not_running', status} end
local idx = tonumber(f.idx)
if not idx or idx < 0 or idx >= total or failed < 1 or redis.call('GETBIT', K_DONE, idx) == 0 then
  return redis.error_reply('ERR the dead letter names no failed item of this job')
end
local ok, available = can_afford(K_CREDITS, cost)
if not ok then return {'insufficient', int(cost), int(available)} end

local ts = now_ms()
move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, JOB_ID, 'reserve', 'job_item', cost,
  {idx = idx, reason = 'item_replayed', dead_letter = entry})
redis.call('HINCRBY', K_JOB, 'reserved', int(cost))
redis.call('HINCRBY', K_JOB, 'failed', -1)
redis.call('SETBIT', K_DONE, idx, 0)
local gen = redis.call('HINCRBY', K_JOB, 'gen', 1)
local id = gen .. '-' .. idx
redis.call('XADD', K_ITEMS, id, 'idx', idx, 'attempt', (tonumber(f.attempt) or 0) + 1,
  'ts', ts, 'input', f.input or '', 'last_error', f.reason or '')
redis.call('XDEL', K_DLQ, entry)
return {'ok', id, idx}
