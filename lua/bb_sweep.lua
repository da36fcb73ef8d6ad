-- bb_sweep: remove up to ARGV[3] entries of a namespace whose TTL passed,
-- from value, indexes and aggregates; forget the namespace once nothing in
-- it expires any more.
-- Includes: common, bb
-- KEYS[1] credits, KEYS[2..9] the namespace, ARGV[1] namespace, ARGV[2] price (unused)
--   (see include/bb.lua)
-- ARGV[3] most entries removed
-- Returns the number removed.

local B = bb_from_keys()
local removed = sweep(B, now_ms(), arg_int(3, 1, 100000))
if redis.call('ZCARD', B.exp) == 0 then
  redis.call('SREM', B.namespaces, B.ns)
end
return removed
