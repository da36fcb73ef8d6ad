-- invoke_respond: the target answers a pending invocation. Charges the price
-- on success, releases it on a reported error, records duration and credits
-- (audit event), and posts the reply to the caller's reply stream. A response
-- after the deadline is refused and the invocation ends as timed out.
-- Includes: common, invoke
-- KEYS[1..4]: the invoke layout (see include/invoke.lua)
-- ARGV[1..3]: event id base, tenant, invoke id
-- ARGV[4] MessagePack response   ARGV[5] error message ('' for success)
-- ARGV[6] responding instance or '' (must be the target when given)
-- The reply stream is the one the invocation recorded (same tenant, same slot).
-- Returns {'ok', status, duration_ms} | {'missing'} | {'not_pending', status} | {'wrong_responder'}

local v = redis.call('HMGET', K_INVOKE, 'status', 'deadline', 'target', 'reply_stream')
if not v[1] then return {'missing'} end
if v[1] ~= 'pending' then return {'not_pending', v[1]} end
if ARGV[6] ~= '' and ARGV[6] ~= v[3] then return {'wrong_responder'} end
local now = now_ms()
if now > tonumber(v[2]) then
  finish_invoke('timeout', now, '', 'no response before the deadline')
  return {'not_pending', 'timeout'}
end
local status = ARGV[5] == '' and 'completed' or 'failed'
local duration = finish_invoke(status, now, ARGV[4], ARGV[5])
redis.call('XADD', v[4], 'MAXLEN', '~', 10000, '*', 'reply_to', INVOKE_ID, 'status', status,
  'ts', now, 'error', ARGV[5], 'payload', ARGV[4])
redis.call('EXPIRE', v[4], 3600)
return {'ok', status, duration}
