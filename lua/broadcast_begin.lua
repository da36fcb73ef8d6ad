-- broadcast_begin: the first half of a broadcast to more recipients than one
-- call should deliver to. The caller has staged the recipients (instance
-- ids, RPUSHed in chunks) in the broadcast's list; this reserves the price
-- of every one of them at once — all or nothing, as message_broadcast — and
-- records the message, so that broadcast_deliver can deliver it a chunk per
-- call, from any process. With too little credit nothing is written.
-- @include common
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @key broadcasts the tenant's broadcasts in delivery (zset: id -> last progress, ms)
-- @key record the broadcast's hash (must not exist)
-- @key recipients the broadcast's staged recipient list
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @arg id the broadcast's id
-- @arg price per delivery (minor units)
-- @arg count recipients staged (the list's length)
-- @arg chunk recipients per broadcast_deliver call
-- @arg from from instance
-- @arg type message type
-- @arg job job id
-- @arg payload MessagePack payload
-- @reply ok
-- @reply insufficient(recipients:int, available:int)
-- @reply mismatch(staged:int) the list does not hold `count` recipients
-- @reply exists

arg_text(1)
arg_text(2)
arg_text(3)
local price = arg_int(4, 0, MAX_MINOR)
local count = arg_int(5, 1, 1000000)
arg_int(6, 1, 1000)
arg_text(7)
arg_text(8)
arg_text(9)
if ARGV[10] == nil then arg_error(10, 'is missing') end

if redis.call('EXISTS', KEYS[4]) == 1 then return {'exists'} end
local staged = redis.call('LLEN', KEYS[5])
if staged ~= count then return {'mismatch', staged} end
-- Past MAX_MINOR no balance covers it, whatever the rounding of the product.
local required = price * count
local ok, available = can_afford(KEYS[1], required)
if not ok then return {'insufficient', count, int(available)} end

local ts = now_ms()
move_credits(KEYS[1], KEYS[2], ARGV[1], ts, ARGV[2], ARGV[9], 'reserve', 'agent_message', required,
  {broadcast = ARGV[3], type = ARGV[8], recipients = count})
redis.call('HSET', KEYS[4], 'price', int(price), 'count', count, 'chunk', ARGV[6],
  'cursor', 0, 'delivered', 0, 'from', ARGV[7], 'type', ARGV[8], 'job', ARGV[9],
  'payload', ARGV[10], 'started_at', ts)
redis.call('PERSIST', KEYS[5])
redis.call('ZADD', KEYS[3], ts, ARGV[3])
return {'ok'}
