-- outbox_ack: the sink acknowledges mirrored events and trims what every
-- sink consumer is done with (cheaper than deleting entry by entry).
-- @include common
-- @key outbox the outbox stream
-- @arg group consumer group
-- @arg entry... entry ids
-- @returns int the number acknowledged

local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
trim_acked(KEYS[1], ARGV[1])
return acked
