-- due_settle: end a visit of one tenant: its next deadline replaces the
-- visit's lease (or the tenant leaves the set when it has none), unless a
-- deadline was written during the visit: then the earlier of the two stays.
-- @include common
-- @key due the chore's deadline zset of the tenant's shard
-- @arg tenant the tenant visited
-- @arg lease the lease due_take gave, or 0 for a visit without one (a sweep)
-- @arg next ms of the tenant's next deadline, or 0 for none
-- @returns int 1 when the tenant keeps a deadline, else 0

arg_text(1)
local lease = arg_int(2, 0, 9000000000000000)
local nxt = arg_int(3, 0, 4000000000000000)
local cur = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if cur and lease > 0 and cur == lease then
  if nxt > 0 then
    redis.call('ZADD', KEYS[1], 'XX', int(nxt), ARGV[1])
  else
    redis.call('ZREM', KEYS[1], ARGV[1])
    return 0
  end
elseif nxt > 0 then
  redis.call('ZADD', KEYS[1], 'LT', int(nxt), ARGV[1])
elseif not cur then
  return 0
end
return 1
