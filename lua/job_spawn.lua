-- job_spawn: reserve the job's credits, create the job and enqueue its first
-- items, all or nothing. A small job passes every input here and is
-- `running` at once. A large one first stages the rest in its staging list
-- (plain RPUSH, in chunks) and names how many: the job is then `spawning`
-- (live: its items are claimable as they arrive, it can be cancelled with
-- the exact refund) until job_enqueue has moved every staged input in,
-- `chunk` per call, so no call runs longer than a chunk's worth of work.
-- @include common job
-- @layout job
-- @arg item_cost minor units
-- @arg overhead job overhead (minor units)
-- @arg task the task
-- @arg orchestrator orchestrator instance
-- @arg worker worker agent
-- @arg parallelism most items in flight (0: no bound)
-- @arg item_timeout timeout per item (ms)
-- @arg max_retries retries per item
-- @arg agg_ns blackboard namespace to aggregate outputs into, or ''
-- @arg agg_field field of the output to aggregate, or '' for the output itself
-- @arg task_history history hash of the task
-- @arg worker_history history hash of the worker agent and task
-- @arg staged inputs waiting in the staging list (0: none), items after these
-- @arg chunk most inputs one job_enqueue call moves
-- @arg input... one MessagePack input per item (at most `chunk`)
-- @reply ok(reserved:int, available:int, status:text) available after the reservation
-- @reply insufficient(required:int, available:int)
-- @reply exists

local item_cost, overhead = arg_int(5, 0, MAX_MINOR), arg_int(6, 0, MAX_MINOR)
local task = arg_text(7)
arg_text(9)
arg_int(10, 0, 2147483647)
arg_int(11, 1, 2147483647000)
arg_int(12, 0, 2147483647)
local staged = arg_int(17, 0, 2147483647)
local chunk = arg_int(18, 1, 100000)
local inline = #ARGV - 18
if inline > chunk then arg_error(19, 'at most `chunk` inputs') end
local n = inline + staged
if n < 1 then arg_error(19, 'at least one item') end
if staged > 0 and redis.call('LLEN', K_STAGING) ~= staged then
  arg_error(17, 'the staging list does not hold that many inputs')
end
-- Doubles are exact here: both terms are checked before they are multiplied
-- past 2^53 only when the job could never be paid anyway.
local required = overhead + n * item_cost
if required > MAX_MINOR then arg_error(5, 'the job would reserve more than any balance holds') end

local total, reserved, spent = balance(K_CREDITS)
local available = total - reserved - spent
if required > available then
  return {'insufficient', int(required), int(available)}
end
if redis.call('EXISTS', K_JOB) == 1 then
  return {'exists'}
end

local ts = now_ms()
move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, JOB_ID, 'reserve', 'job', required,
  {task = task, items = n})
move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, JOB_ID, 'spend', 'agent_spawn', overhead,
  {task = task})

local status = staged > 0 and 'spawning' or 'running'
redis.call('HSET', K_JOB,
  'status', status, 'task', task, 'orchestrator', ARGV[8], 'worker_agent', ARGV[9],
  'parallelism', ARGV[10], 'timeout_ms', ARGV[11], 'max_retries', ARGV[12],
  'total', n, 'completed', 0, 'failed', 0, 'retried', 0, 'gen', 1,
  'item_cost', int(item_cost), 'overhead', int(overhead),
  'reserved', int(required), 'spent', int(overhead), 'refunded', 0,
  'created_at', ts, 'started_at', ts, 'agg_ns', ARGV[13], 'agg_field', ARGV[14],
  'stats_task', ARGV[15], 'stats_agent', ARGV[16])
if staged > 0 then
  -- The staged inputs now belong to the job: kept until enqueued or the job ends.
  redis.call('HSET', K_JOB, 'enqueued', inline, 'chunk', chunk, 'enqueued_at', ts)
  redis.call('PERSIST', K_STAGING)
end

redis.call('XGROUP', 'CREATE', K_ITEMS, GROUP, '0', 'MKSTREAM')
-- First attempts carry only idx and input (attempt 0 is implied): every
-- field per entry counts.
for i = 1, inline do
  redis.call('XADD', K_ITEMS, '1-' .. (i - 1), 'idx', i - 1, 'input', ARGV[18 + i])
end
redis.call('ZADD', K_JOBS, ts, JOB_ID)
redis.call('SADD', K_ACTIVE, JOB_ID)
job_summary(ts)
return {'ok', int(required), int(available - required), status}
