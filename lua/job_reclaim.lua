-- job_reclaim: re-deliver items whose worker went quiet for longer than the
-- job's timeout per item (XAUTOCLAIM); past max_retries they fail for good.
-- Also trims entries that every consumer is done with. `ended`, `status`:
-- how long the job lasted (ms) and how it ended, when this call ended it,
-- else 0 and ''. `spawn_idle`: for a spawning job, ms since its last chunk
-- was enqueued (whoever calls may resume a spawner that died), else -1.
-- @include common job
-- @layout job
-- @arg consumer consumer name of the reclaimer
-- @arg count most entries per call
-- @reply ok(requeued:int, failed:int, ended:int, status:text, spawn_idle:int)
-- @reply missing
-- @reply not_running(status:text)

arg_text(5)
arg_int(6, 1, 1000)
local v = redis.call('HMGET', K_JOB, 'status', 'item_cost', 'timeout_ms', 'max_retries',
  'enqueued_at')
local status, cost, timeout_ms, max_retries = v[1], tonumber(v[2]), v[3], tonumber(v[4])
if not status then
  redis.call('SREM', K_ACTIVE, JOB_ID)
  return {'missing'}
end
if not is_live(status) then
  redis.call('SREM', K_ACTIVE, JOB_ID)
  return {'not_running', status}
end

local r = redis.call('XAUTOCLAIM', K_ITEMS, GROUP, ARGV[5], timeout_ms, '0-0', 'COUNT', ARGV[6])
local ts = now_ms()
local requeued, failed = 0, 0
for _, entry in ipairs(r[2]) do
  local entry_id, kv = entry[1], entry[2]
  local idx = item_index(entry_id)
  if kv and idx then
    local f = {}
    for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
    if redis.call('GETBIT', K_DONE, idx) == 1 then
      redis.call('XACK', K_ITEMS, GROUP, entry_id)
      redis.call('XDEL', K_ITEMS, entry_id)
    elseif attempt_of(f) < max_retries then
      requeue(entry_id, idx, f, 'timed out', ts)
      requeued = requeued + 1
    else
      fail_item(entry_id, idx, f, 'timed out after ' .. (attempt_of(f) + 1) .. ' attempts', ts, cost)
      failed = failed + 1
    end
  end
end
local ended, ended_status = 0, ''
if failed > 0 then ended, ended_status = finish_if_done(ts) end
if ended == 0 then trim_acked(K_ITEMS, GROUP) end
local spawn_idle = -1
if ended == 0 and status == 'spawning' then spawn_idle = ts - (tonumber(v[5]) or 0) end
return {'ok', requeued, failed, ended, ended_status, spawn_idle}
