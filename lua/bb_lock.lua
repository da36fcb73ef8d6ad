-- bb_lock: acquire, release or extend a named lock with a holder and a TTL.
-- Each acquisition takes the next fencing token of the lock (monotonic, kept
-- forever), so writes of a holder whose lock was taken over are refused.
-- @include common bb
-- @layout bb
-- @key lock the lock's hash (holder, token)
-- @arg lock lock name
-- @arg action 'acquire' | 'release' | 'extend'
-- @arg holder who holds it
-- @arg ttl ms
-- @reply ok(token:int)
-- @reply held(holder:text, token:int)
-- @reply not_holder(holder:text) the holder, or ''
-- @reply insufficient(price:int, available:int)

local B = bb_from_keys()
local K_LOCK = KEYS[11]
local name = arg_text(3)
local action = arg_one_of(4, {acquire = true, release = true, extend = true})
local holder, ttl = arg_text(5), ARGV[6]
if action ~= 'release' then arg_int(6, 1, 315360000000) end
local v = redis.call('HMGET', K_LOCK, 'holder', 'token')
local current, token = v[1], v[2]

if action == 'acquire' then
  if current and current ~= holder then return {'held', current, token} end
  local ok, available = meter(KEYS[1], tonumber(ARGV[2]), 'blackboard_lock')
  if not ok then return {'insufficient', ARGV[2], int(available)} end
  if not current then
    token = redis.call('HINCRBY', B.fence, name, 1)
    redis.call('HSET', K_LOCK, 'holder', holder, 'token', token)
  end
  redis.call('PEXPIRE', K_LOCK, ttl)
  return {'ok', token}
end
if current ~= holder then return {'not_holder', current or ''} end
local ok, available = meter(KEYS[1], tonumber(ARGV[2]), 'blackboard_lock')
if not ok then return {'insufficient', ARGV[2], int(available)} end
if action == 'release' then
  redis.call('DEL', K_LOCK)
else
  redis.call('PEXPIRE', K_LOCK, ttl)
end
return {'ok', token}
