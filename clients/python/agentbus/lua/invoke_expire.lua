-- invoke_expire: end a pending invocation whose deadline passed (the caller
-- gave up, or the sweeper found it): status timeout, reservation released.
-- @include common invoke
-- @layout invoke
-- @arg own_timer '1' when the caller's own timer fired (no need to wait for the deadline)
-- @reply timeout(duration_ms:int)
-- @reply missing
-- @reply not_pending(status:text)
-- @reply not_due

arg_one_of(4, {['0'] = true, ['1'] = true})
local v = redis.call('HMGET', K_INVOKE, 'status', 'deadline')
if not v[1] then
  redis.call('ZREM', K_PENDING, INVOKE_ID)
  return {'missing'}
end
if v[1] ~= 'pending' then return {'not_pending', v[1]} end
local now = now_ms()
if ARGV[4] ~= '1' and now < tonumber(v[2]) then return {'not_due'} end
local duration = finish_invoke('timeout', now, '', 'no response before the deadline')
return {'timeout', duration}
