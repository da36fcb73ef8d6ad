-- Shared by the job scripts (prepended after common.lua). Every job script
-- takes the same KEYS and the same first four ARGV (`@layout job`):
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @key job the job's hash
-- @key items its items stream (group 'workers')
-- @key done its done bitmap (one bit per item)
-- @key results its results stream
-- @key active the tenant's active-jobs set
-- @key dlq its dead-letter stream
-- @key jobs its jobs-by-creation zset
-- @key staging its staged inputs (list) while a large spawn is enqueued
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @arg job_id the job id
-- @arg retention seconds a finished job's keys are kept
-- Item entry ids are "<gen>-<idx>": the item index is the sequence part, so
-- an id names its item without a lookup, and a retry (new gen) sorts last.
-- A job is `spawning` while a large spawn's staged inputs are moved into its
-- items stream, chunk by chunk (job_enqueue, which names new entries with
-- the current gen, so they sort after any retry); it is live then as when
-- `running`: items are claimed, completed, failed, reclaimed, cancelled.

local K_CREDITS, K_OUTBOX, K_JOB, K_ITEMS, K_DONE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_RESULTS, K_ACTIVE, K_DLQ, K_JOBS = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_STAGING = KEYS[10]
local EVENT_BASE, TENANT, JOB_ID = arg_text(1), arg_text(2), arg_text(3)
local RETENTION = arg_int(4, 0, MAX_MINOR)
local GROUP = 'workers'

-- Whether a job in `status` delivers and accepts work.
local function is_live(status)
  return status == 'running' or status == 'spawning'
end

local function item_index(entry_id)
  local idx = string.match(entry_id, '^%d+%-(%d+)$')
  return idx and tonumber(idx)
end

-- Fields of a stream entry as a table, or nil when it no longer exists.
local function entry_fields(entry_id)
  local r = redis.call('XRANGE', K_ITEMS, entry_id, entry_id)
  if #r == 0 then return nil end
  local f = {}
  local kv = r[1][2]
  for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
  return f
end

-- Earlier attempts of an item entry (first attempts carry no field).
local function attempt_of(f)
  return tonumber(f.attempt) or 0
end

local function is_pending(entry_id)
  local p = redis.call('XPENDING', K_ITEMS, GROUP, entry_id, entry_id, 1)
  return p[1] ~= nil, p[1] and tonumber(p[1][3]) or 0
end

-- History for simulation: per task, and per worker agent and task, a
-- log-scale histogram of item durations (4 buckets per doubling of ms) and
-- outcome counters. The job hash names those two hashes (`stats_task`,
-- `stats_agent`; same tenant, same slot).
local function stats_keys()
  local v = redis.call('HMGET', K_JOB, 'stats_task', 'stats_agent')
  local keys = {}
  for _, k in ipairs(v) do
    if k and k ~= '' then keys[#keys + 1] = k end
  end
  return keys
end

-- Adds a batch of item durations (ms) to the histograms.
local function record_durations(durations)
  if #durations == 0 then return end
  local buckets, sum = {}, 0
  for _, ms in ipairs(durations) do
    local b = 'b' .. math.floor(4 * math.log(ms + 1) / math.log(2))
    buckets[b] = (buckets[b] or 0) + 1
    sum = sum + ms
  end
  for _, key in ipairs(stats_keys()) do
    for b, n in pairs(buckets) do redis.call('HINCRBY', key, b, n) end
    redis.call('HINCRBY', key, 'completed', #durations)
    redis.call('HINCRBY', key, 'sum_ms', int(sum))
  end
end

-- Counts an outcome ('retried' or 'failed') of one attempt.
local function record_outcome(field)
  for _, key in ipairs(stats_keys()) do
    redis.call('HINCRBY', key, field, 1)
  end
end

-- A job-summary event with every field of the job hash.
local function job_summary(ts)
  local args = {'XADD', K_OUTBOX, '*', 'type', 'job', 'id', next_event_id(EVENT_BASE),
    'ts', ts, 'tenant', TENANT, 'job', JOB_ID}
  local fields = redis.call('HGETALL', K_JOB)
  for i = 1, #fields do args[#args + 1] = fields[i] end
  redis.call(unpack(args))
end

-- Ends the job: final status, no more deliveries (the items stream and its
-- group are deleted), no more reclaiming; the rest expires after retention.
-- UNLINK: a large stream or staging list is freed off the main thread, so
-- ending a 100,000-item job costs the script no more than a small one.
-- Returns how long the job lasted (ms).
local function end_job(status, ts)
  redis.call('HSET', K_JOB, 'status', status, 'completed_at', ts)
  local lasted = ts - tonumber(redis.call('HGET', K_JOB, 'created_at') or ts)
  redis.call('SREM', K_ACTIVE, JOB_ID)
  redis.call('UNLINK', K_ITEMS, K_STAGING)
  for _, key in ipairs({K_JOB, K_DONE, K_RESULTS}) do
    redis.call('EXPIRE', key, RETENTION)
  end
  job_summary(ts)
  return lasted
end

-- Completed when every item is done; failed when some failed for good.
-- Returns how long the job lasted (ms) and its final status when it ended
-- now, else 0 and ''.
local function finish_if_done(ts)
  local v = redis.call('HMGET', K_JOB, 'total', 'completed', 'failed')
  local total, completed, failed = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if completed + failed < total then return 0, '' end
  local status = failed > 0 and 'failed' or 'completed'
  return math.max(end_job(status, ts), 1), status
end

-- Puts an item back as a new entry (attempt + 1) and drops the old one.
local function requeue(entry_id, idx, f, reason, ts)
  local gen = redis.call('HINCRBY', K_JOB, 'gen', 1)
  redis.call('XADD', K_ITEMS, gen .. '-' .. idx, 'idx', idx, 'attempt', attempt_of(f) + 1,
    'ts', ts, 'input', f.input, 'last_error', reason)
  redis.call('XACK', K_ITEMS, GROUP, entry_id)
  redis.call('XDEL', K_ITEMS, entry_id)
  redis.call('HINCRBY', K_JOB, 'retried', 1)
  record_outcome('retried')
end

-- Ends an item as failed for good: dead letter, and its reservation released.
local function fail_item(entry_id, idx, f, reason, ts, cost)
  redis.call('SETBIT', K_DONE, idx, 1)
  redis.call('HINCRBY', K_JOB, 'failed', 1)
  redis.call('XADD', K_DLQ, '*', 'type', 'item', 'job', JOB_ID, 'idx', idx,
    'attempt', attempt_of(f), 'reason', reason, 'ts', ts, 'input', f.input)
  move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, JOB_ID, 'refund', 'job_item', cost,
    {idx = idx, reason = 'item_failed'})
  redis.call('HINCRBY', K_JOB, 'refunded', int(cost))
  redis.call('XACK', K_ITEMS, GROUP, entry_id)
  redis.call('XDEL', K_ITEMS, entry_id)
  record_outcome('failed')
end
