-- message_send: charge one message and append it to the recipient's inbox.
-- Includes: common
-- KEYS[1] credits hash   KEYS[2] outbox stream
-- KEYS[3] recipient agent hash   KEYS[4] recipient inbox stream
-- ARGV[1] event id base  ARGV[2] tenant  ARGV[3] price (minor units)
-- ARGV[4] inbox cap (MAXLEN ~)  ARGV[5] message id  ARGV[6] from instance
-- ARGV[7] message type   ARGV[8] job id or ''   ARGV[9] reply_to or ''
-- ARGV[10] MessagePack payload   ARGV[11] reply stream or ''
-- ARGV[12] '1' when the recipient must be registered ('0' for a reply to a
--          caller's reply stream, given as KEYS[4])
-- Returns {'ok', entry_id} | {'unknown_recipient'} | {'insufficient', required, available}

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
