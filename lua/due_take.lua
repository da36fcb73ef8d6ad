-- due_take: take the tenants of one deadline shard whose time has come,
-- and those whose lease is older than `stuck_ms` (their visitor stopped),
-- leasing each for this visit: its score becomes lease_base + now, above
-- every real deadline, so a deadline written during the visit (ZADD LT)
-- lowers it and due_settle keeps that one.
-- Deadlines are written with the writers' clocks, so `now` is the caller's.
-- @include common
-- @key due the chore's deadline zset of one shard
-- @arg now ms, the caller's clock
-- @arg most tenants taken at most
-- @arg lease_base score of a lease at time 0 (above every deadline, in ms)
-- @arg stuck_ms a lease this old is taken again; 0 to leave leases alone
-- @returns (lease:int, tenants:texts) the lease given and the tenants taken

local now = arg_int(1, 1, 4000000000000)
local most = arg_int(2, 1, 10000)
local base = arg_int(3, 1, 4000000000000000)
local stuck = arg_int(4, 0, 86400000)
local lease = base + now
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now), 'LIMIT', 0, most)
if stuck > 0 and #taken < most then
  local left = redis.call('ZRANGEBYSCORE', KEYS[1], int(base), int(lease - stuck), 'LIMIT', 0, most - #taken)
  for i = 1, #left do taken[#taken + 1] = left[i] end
end
for i = 1, #taken do
  redis.call('ZADD', KEYS[1], 'XX', int(lease), taken[i])
end
return {lease, taken}
