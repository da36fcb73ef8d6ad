-- invoke_start: check the target, reserve the invoke price, record the
-- invocation as pending (audit event) and deliver the request to the target.
-- KEYS[1..4]: the invoke layout (see include/invoke.lua)
-- KEYS[5] agents zset   KEYS[6] target agent hash   KEYS[7] target inbox stream
-- ARGV[1..3]: event id base, tenant, invoke id
-- ARGV[4] price (minor units)   ARGV[5] inbox cap   ARGV[6] message id
-- ARGV[7] caller instance       ARGV[8] target instance   ARGV[9] job id or ''
-- ARGV[10] MessagePack request  ARGV[11] timeout (ms)  ARGV[12] caller's reply stream
-- ARGV[13] staleness limit (ms) ARGV[14] retention of the invoke hash after it ends (s)
-- Returns {'ok', started_at} | {'unknown_target'} | {'stale_target', status}
--       | {'insufficient', required, available} | {'exists'}

local status = redis.call('HGET', KEYS[6], 'status')
if not status then return {'unknown_target'} end
local now = now_ms()
local beat = tonumber(redis.call('ZSCORE', KEYS[5], ARGV[8]) or 0)
if status == 'stale' or status == 'stopped' or now - beat > tonumber(ARGV[13]) then
  return {'stale_target', status}
end
local price = tonumber(ARGV[4])
local ok, available = can_afford(K_CREDITS, price)
if not ok then return {'insufficient', int(price), int(available)} end
if redis.call('EXISTS', K_INVOKE) == 1 then return {'exists'} end

move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, now, TENANT, ARGV[9], 'reserve', 'agent_invoke', price,
  {invoke_id = INVOKE_ID})
local deadline = now + tonumber(ARGV[11])
redis.call('HSET', K_INVOKE, 'status', 'pending', 'caller', ARGV[7], 'target', ARGV[8],
  'job', ARGV[9], 'request', ARGV[10], 'price', int(price), 'started_at', now,
  'deadline', deadline, 'reply_stream', ARGV[12], 'retention', ARGV[14])
redis.call('EXPIRE', K_INVOKE, math.ceil(tonumber(ARGV[11]) / 1000) + tonumber(ARGV[14]))
redis.call('ZADD', K_PENDING, deadline, INVOKE_ID)
audit_event('invoke_start', now)

ensure_inbox(KEYS[7])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[5], '*',
  'id', ARGV[6], 'from', ARGV[7], 'type', 'invoke_request', 'job', ARGV[9], 'reply_to', '',
  'ts', now, 'invoke_id', INVOKE_ID, 'deadline', deadline, 'payload', ARGV[10])
return {'ok', now}
