-- Shared by the invoke scripts (prepended after common.lua); their first
-- KEYS and ARGV (`@layout invoke`):
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @key invoke the invocation's hash
-- @key pending the tenant's pending-invokes zset (invoke id -> deadline ms)
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @arg invoke_id the invocation id

local K_CREDITS, K_OUTBOX, K_INVOKE, K_PENDING = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local EVENT_BASE, TENANT, INVOKE_ID = arg_text(1), arg_text(2), arg_text(3)

-- An audit event carrying the whole invocation as it stands, so the sink can
-- upsert the audit row from any event, in any order.
local function audit_event(kind, ts)
  local args = {'XADD', K_OUTBOX, '*', 'type', kind, 'id', next_event_id(EVENT_BASE), 'ts', ts,
    'tenant', TENANT, 'invoke_id', INVOKE_ID}
  local fields = redis.call('HGETALL', K_INVOKE)
  for i = 1, #fields do args[#args + 1] = fields[i] end
  redis.call(unpack(args))
end

-- Ends a pending invocation: charge on success, release otherwise. Only now
-- does the hash get its TTL (the retention recorded at start).
local function finish_invoke(status, ts, response, error_message)
  local v = redis.call('HMGET', K_INVOKE, 'price', 'started_at', 'job', 'retention')
  local price, started = tonumber(v[1]), tonumber(v[2])
  local charged = 0
  if status == 'completed' then
    move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, v[3], 'spend', 'agent_invoke', price,
      {invoke_id = INVOKE_ID})
    charged = price
  else
    move_credits(K_CREDITS, K_OUTBOX, EVENT_BASE, ts, TENANT, v[3], 'refund', 'agent_invoke', price,
      {invoke_id = INVOKE_ID, reason = status})
  end
  redis.call('HSET', K_INVOKE, 'status', status, 'completed_at', ts, 'duration_ms', ts - started,
    'credits_charged', int(charged), 'response', response, 'error', error_message)
  redis.call('ZREM', K_PENDING, INVOKE_ID)
  redis.call('EXPIRE', K_INVOKE, tonumber(v[4]) or 3600)
  audit_event('invoke_end', ts)
  return ts - started
end
