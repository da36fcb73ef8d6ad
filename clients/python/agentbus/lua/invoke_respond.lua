-- invoke_respond: the target answers a pending invocation. Charges the price
-- on success, releases it on a reported error, records duration and credits
-- (audit event), and posts the reply to the caller's reply stream. A response
-- after the deadline is refused and the invocation ends as timed out.
-- The reply stream is the one the invocation recorded (same tenant, same slot).
-- @include common invoke
-- @layout invoke
-- @arg response MessagePack response
-- @arg error error message ('' for success)
-- @arg responder responding instance or '' (must be the target when given)
-- @reply ok(status:text, duration_ms:int)
-- @reply missing
-- @reply not_pending(status:text)
-- @reply wrong_responder

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
