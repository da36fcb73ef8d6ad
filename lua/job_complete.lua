-- job_complete: complete delivered items, charge each exactly once.
-- An item is completed only while its entry is pending (delivered, not yet
-- acked or reclaimed); a second completion is a duplicate and costs nothing.
-- A job spawned with an aggregate namespace also writes the blackboard keys
-- of that namespace (same tenant, same slot), named from the prefixes
-- keys.rs passes. In `ok`: `ended` is how long the job lasted (ms) and
-- `status` its final status when this call ended it, else 0 and ''; one
-- outcome per pair, completed | duplicate | stale (no longer pending) |
-- invalid; the delivery-to-completion ms of each completed item.
-- @include common job bb
-- @layout job
-- @arg bb_root the tenant's blackboard key prefix
-- @arg bb_namespaces its namespaces set
-- @arg bb_names its set of every namespace written to
-- @arg (entry, output)... an entry id and its MessagePack output (at most 1,000 pairs)
-- @reply ok(ended:int, status:text, outcomes:texts, durations:ints)
-- @reply missing
-- @reply not_running(status:text)

arg_text(5)
arg_text(6)
arg_text(7)
if #ARGV < 9 or (#ARGV - 7) % 2 ~= 0 then arg_error(8, 'must be pairs of entry id and output') end
if #ARGV - 7 > 2000 then arg_error(8, 'at most 1000 pairs per call') end
local v = redis.call('HMGET', K_JOB, 'status', 'item_cost', 'total', 'agg_ns', 'agg_field')
local status, cost, total = v[1], tonumber(v[2]), tonumber(v[3])
-- The job may aggregate numeric outputs into a blackboard namespace.
local agg = v[4] and v[4] ~= '' and bb_named(ARGV[5], ARGV[6], ARGV[7], v[4])
local agg_field = v[5] or ''
if not status then return {'missing'} end
if not is_live(status) then return {'not_running', status} end

-- Puts an item's numeric output (or the number at `field` of it) into the
-- namespace as "<job>:<idx>", rounded to micro-units.
local function aggregate_output(B, field, idx, output)
  local ok, decoded = pcall(cmsgpack.unpack, output)
  if not ok then return end
  local x = decoded
  if field ~= '' then x = type(decoded) == 'table' and decoded[field] or nil end
  if type(x) ~= 'number' or x ~= x or math.abs(x) > 9000000000 then return end
  local micro = x < 0 and -math.floor(-x * 1000000 + 0.5) or math.floor(x * 1000000 + 0.5)
  bb_put(B, JOB_ID .. ':' .. idx, micro_to_json(micro), int(micro), 0)
end

-- Which entries are pending, and since when: one XPENDING over the range
-- the batch spans (a worker mostly completes what it claimed together, so
-- the range holds little else), instead of one per entry; an entry the
-- range's rows did not cover (more rows than asked for) is asked alone.
local function id_parts(entry_id)
  local gen, idx = string.match(entry_id, '^(%d+)%-(%d+)$')
  return tonumber(gen), tonumber(idx)
end
-- Each pair's item index (nil: not an item of this job).
local idx_of = {}
local lo, hi, valid = nil, nil, 0
for i = 8, #ARGV - 1, 2 do
  local gen, idx = id_parts(ARGV[i])
  if gen and idx < total then
    idx_of[i] = idx
    valid = valid + 1
    if not lo or gen < lo[1] or (gen == lo[1] and idx < lo[2]) then lo = {gen, idx, ARGV[i]} end
    if not hi or gen > hi[1] or (gen == hi[1] and idx > hi[2]) then hi = {gen, idx, ARGV[i]} end
  end
end
local idle_of, covered = {}, false
if lo then
  local most = math.min(4 * valid + 16, 4016)
  local rows = redis.call('XPENDING', K_ITEMS, GROUP, lo[3], hi[3], most)
  for _, row in ipairs(rows) do idle_of[row[1]] = tonumber(row[3]) end
  covered = #rows < most
end
local function pending_since(entry_id)
  local idle = idle_of[entry_id]
  if idle then return true, idle end
  if covered then return false, 0 end
  return is_pending(entry_id)
end

local ts = now_ms()
-- Whether each item's entry is pending; pending ones are acknowledged.
local pending_of, idle_of_pair, acks, bits = {}, {}, {}, {'BITFIELD', K_DONE}
for i = 8, #ARGV - 1, 2 do
  local idx = idx_of[i]
  if idx then
    local pending, idle_ms = pending_since(ARGV[i])
    if pending then
      pending_of[i], idle_of_pair[i] = true, idle_ms
      acks[#acks + 1] = ARGV[i]
      -- One BITFIELD sets the done bit of every pending item and answers
      -- each old bit, in order: 1 means another delivery completed it
      -- first (an item twice in the batch sees its own first set).
      bits[#bits + 1] = 'SET'
      bits[#bits + 1] = 'u1'
      bits[#bits + 1] = idx
      bits[#bits + 1] = 1
    end
  end
end
local was_done = #acks > 0 and redis.call(unpack(bits)) or {}

local out = {}
local completed, durations, n = 0, {}, 0
for i = 8, #ARGV - 1, 2 do
  local idx = idx_of[i]
  local outcome
  if not idx then
    outcome = 'invalid'
  elseif not pending_of[i] then
    outcome = redis.call('GETBIT', K_DONE, idx) == 1 and 'duplicate' or 'stale'
  else
    n = n + 1
    if was_done[n] == 1 then
      outcome = 'duplicate'
    else
      local output = ARGV[i + 1]
      redis.call('XADD', K_RESULTS, '*', 'idx', idx, 'ts', ts, 'output', output)
      if agg then aggregate_output(agg, agg_field, idx, output) end
      durations[#durations + 1] = idle_of_pair[i]
      completed = completed + 1
      outcome = 'completed'
    end
  end
  out[#out + 1] = outcome
end

if #acks > 0 then
  redis.call('XACK', K_ITEMS, GROUP, unpack(acks))
end
local ended, ended_status = 0, ''
if completed > 0 then
  local amount = completed * cost
  redis.call('HINCRBY', K_JOB, 'completed', completed)
  redis.call('HINCRBY', K_JOB, 'spent', int(amount))
  move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, JOB_ID, 'spend', 'job_item', amount,
    {items = completed})
  record_durations(durations)
  ended, ended_status = finish_if_done(ts)
end
return {'ok', ended, ended_status, out, durations}
