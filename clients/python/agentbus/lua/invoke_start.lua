-- invoke_start: check the target, reserve the invoke price, record the
-- invocation as pending (audit event) and deliver the request to the target.
-- An invocation refused before it starts (unknown or stopped target, too
-- little credit) is recorded too: status failed, its reason as the error,
-- nothing reserved, one 'invoke_refused' audit event.
-- The invoke hash has no TTL while pending: the reservation it records is
-- released by whatever ends it (respond, expire, the sweeper), never by time.
-- @include common invoke
-- @layout invoke
-- @key agents the tenant's agents zset
-- @key target the target instance's hash
-- @key target_inbox its inbox stream
-- @arg price minor units
-- @arg inbox_cap MAXLEN ~ of the inbox
-- @arg message_id the request message's id
-- @arg caller caller instance
-- @arg target target instance
-- @arg job job id or ''
-- @arg request MessagePack request
-- @arg timeout ms
-- @arg reply_stream the caller's reply stream
-- @arg staleness ms since a heartbeat past which the target counts as gone
-- @arg retention seconds the invoke hash is kept after it ends
-- @reply ok(started_at:int)
-- @reply unknown_target
-- @reply target_stopped(status:text)
-- @reply insufficient_credits(required:int, available:int)
-- @reply exists

local price = arg_int(4, 0, MAX_MINOR)
arg_int(5, 1, MAX_MINOR)
arg_text(6)
arg_text(7)
arg_text(8)
arg_int(11, 1, 86400000)
arg_text(12)
arg_int(13, 1, MAX_MINOR)
arg_int(14, 1, MAX_MINOR)
if redis.call('EXISTS', K_INVOKE) == 1 then return {'exists'} end
local now = now_ms()

local function refuse(reason, detail)
  redis.call('HSET', K_INVOKE, 'status', 'failed', 'caller', ARGV[7], 'target', ARGV[8],
    'job', ARGV[9], 'request', ARGV[10], 'price', int(price), 'started_at', now,
    'completed_at', now, 'duration_ms', 0, 'credits_charged', 0, 'response', '',
    'error', reason .. ': ' .. detail, 'refused', reason)
  redis.call('EXPIRE', K_INVOKE, tonumber(ARGV[14]))
  audit_event('invoke_refused', now)
end

local status = redis.call('HGET', KEYS[6], 'status')
if not status then
  refuse('unknown_target', 'no instance ' .. ARGV[8] .. ' is registered')
  return {'unknown_target'}
end
local beat = tonumber(redis.call('ZSCORE', KEYS[5], ARGV[8]) or 0)
if status == 'stale' or status == 'stopped' or now - beat > tonumber(ARGV[13]) then
  if status ~= 'stale' and status ~= 'stopped' then status = 'stale' end
  refuse('target_stopped', 'instance ' .. ARGV[8] .. ' is ' .. status)
  return {'target_stopped', status}
end
local ok, available = can_afford(K_CREDITS, price)
if not ok then
  refuse('insufficient_credits', 'required ' .. int(price) .. ', available ' .. int(available)
    .. ' (minor units)')
  return {'insufficient_credits', int(price), int(available)}
end

move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, now, TENANT, ARGV[9], 'reserve', 'agent_invoke', price,
  {invoke_id = INVOKE_ID})
local deadline = now + tonumber(ARGV[11])
redis.call('HSET', K_INVOKE, 'status', 'pending', 'caller', ARGV[7], 'target', ARGV[8],
  'job', ARGV[9], 'request', ARGV[10], 'price', int(price), 'started_at', now,
  'deadline', deadline, 'reply_stream', ARGV[12], 'retention', ARGV[14])
redis.call('ZADD', K_PENDING, deadline, INVOKE_ID)
audit_event('invoke_start', now)

ensure_inbox(KEYS[7])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[5], '*',
  'id', ARGV[6], 'from', ARGV[7], 'type', 'invoke_request', 'job', ARGV[9], 'reply_to', '',
  'ts', now, 'invoke_id', INVOKE_ID, 'deadline', deadline, 'payload', ARGV[10])
return {'ok', now}
