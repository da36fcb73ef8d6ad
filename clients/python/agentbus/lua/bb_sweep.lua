-- bb_sweep: remove up to `most` entries of a namespace whose TTL passed,
-- from value, indexes and aggregates; forget the namespace once nothing in
-- it expires any more. (`price` is unused.)
-- @include common bb
-- @layout bb
-- @arg most entries removed at most
-- @returns int the number removed

local B = bb_from_keys()
local removed = sweep(B, now_ms(), arg_int(3, 1, 100000))
if redis.call('ZCARD', B.exp) == 0 then
  redis.call('SREM', B.namespaces, B.ns)
end
return removed
