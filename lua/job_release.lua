-- job_release: a worker gives back items it holds (on shutdown, say), so
-- they go out again at once instead of after `timeout_per_item`. Each goes
-- back as a new delivery of the same attempt (a release is no failure: no
-- attempt is counted, nothing is charged or refunded); the old delivery id
-- turns `stale`. Only deliveries this consumer holds are released; with no
-- entry given, those it holds, up to `most`.
-- @include common job
-- @layout job
-- @arg consumer the worker (consumer) holding them
-- @arg most with no entry given: most released by this call (1 to 1000)
-- @arg entry... delivery (entry) ids to release, at most 1000
-- @reply ok(released:texts) the delivery ids released
-- @reply missing
-- @reply not_running(status:text)

local consumer = arg_text(5)
local most = arg_int(6, 1, 1000)
if #ARGV - 6 > 1000 then arg_error(7, 'at most 1000 entries per call') end
for i = 7, #ARGV do
  if not item_index(ARGV[i]) then arg_error(i, 'must be an item delivery id') end
end
local status = redis.call('HGET', K_JOB, 'status')
if not status then return {'missing'} end
if not is_live(status) then return {'not_running', status} end

local held = {}
if #ARGV == 6 then
  for _, row in ipairs(redis.call('XPENDING', K_ITEMS, GROUP, '-', '+', most, consumer)) do
    held[#held + 1] = row[1]
  end
else
  for i = 7, #ARGV do
    if redis.call('XPENDING', K_ITEMS, GROUP, ARGV[i], ARGV[i], 1, consumer)[1] then
      held[#held + 1] = ARGV[i]
    end
  end
end

local ts = now_ms()
local released = {}
for _, entry_id in ipairs(held) do
  local idx = item_index(entry_id)
  local f = entry_fields(entry_id)
  if idx and f and redis.call('GETBIT', K_DONE, idx) == 0 then
    local gen = redis.call('HINCRBY', K_JOB, 'gen', 1)
    local add = {'XADD', K_ITEMS, gen .. '-' .. idx, 'idx', idx, 'attempt', attempt_of(f),
      'ts', ts, 'input', f.input}
    if f.last_error then
      add[#add + 1] = 'last_error'
      add[#add + 1] = f.last_error
    end
    redis.call(unpack(add))
    redis.call('XACK', K_ITEMS, GROUP, entry_id)
    redis.call('XDEL', K_ITEMS, entry_id)
    released[#released + 1] = entry_id
  end
end
return {'ok', released}
