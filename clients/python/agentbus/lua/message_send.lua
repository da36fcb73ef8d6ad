-- message_send: charge one message and append it to the recipient's inbox.
-- @include common
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @key agent recipient agent hash
-- @key inbox recipient inbox stream (or the caller's reply stream)
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @arg price minor units
-- @arg inbox_cap MAXLEN ~ of the inbox
-- @arg message_id the message's id
-- @arg from from instance
-- @arg type message type
-- @arg job job id or ''
-- @arg reply_to message id answered, or ''
-- @arg payload MessagePack payload
-- @arg reply_stream reply stream or ''
-- @arg registered '1' when the recipient must be registered ('0' for a
--   reply to a caller's reply stream, given as `inbox`)
-- @reply ok(entry_id:text)
-- @reply unknown_recipient
-- @reply insufficient(required:int, available:int)

arg_text(1)
arg_text(2)
local price = arg_int(3, 0, MAX_MINOR)
arg_int(4, 1, MAX_MINOR)
arg_text(5)
arg_text(6)
arg_text(7)
arg_one_of(12, {['0'] = true, ['1'] = true})
if ARGV[12] == '1' and redis.call('EXISTS', KEYS[3]) == 0 then return {'unknown_recipient'} end
local ok, available = can_afford(KEYS[1], price)
if not ok then return {'insufficient', int(price), int(available)} end

local ts = now_ms()
local to = redis.call('HGET', KEYS[3], 'instance_id') or ''
move_credits(KEYS[1], KEYS[2], ARGV[1], ts, ARGV[2], ARGV[8], 'charge', 'agent_message', price,
  {to = to, type = ARGV[7]})
if ARGV[12] == '1' then ensure_inbox(KEYS[4]) end
local fields = {'XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*',
  'id', ARGV[5], 'from', ARGV[6], 'type', ARGV[7], 'job', ARGV[8], 'reply_to', ARGV[9], 'ts', ts}
if ARGV[11] ~= '' then
  fields[#fields + 1] = 'reply_stream'
  fields[#fields + 1] = ARGV[11]
end
fields[#fields + 1] = 'payload'
fields[#fields + 1] = ARGV[10]
return {'ok', redis.call(unpack(fields))}
