-- message_broadcast: send one message to every recipient, all or nothing:
-- the price of every delivery is checked first and charged once (one ledger
-- event); with too little credit nothing is delivered or charged. `ok`
-- lists those still registered (deregistered ones are skipped, not
-- charged); `insufficient` gives the count (required = recipients x price,
-- computed by the caller, as it may pass what a double holds exactly).
-- @include common
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @key (agent, inbox)... a recipient's agent hash and inbox stream
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @arg price per delivery (minor units)
-- @arg inbox_cap MAXLEN ~ of an inbox
-- @arg from from instance
-- @arg type message type
-- @arg job job id or ''
-- @arg payload MessagePack payload
-- @arg message_id... one message id per recipient
-- @reply ok(recipients:texts, entries:texts)
-- @reply insufficient(recipients:int, available:int)

arg_text(1)
arg_text(2)
local price = arg_int(3, 0, MAX_MINOR)
arg_int(4, 1, MAX_MINOR)
arg_text(5)
arg_text(6)
local pairs_n = (#KEYS - 2) / 2
if pairs_n ~= math.floor(pairs_n) then error({err = 'ERR KEYS must be pairs of agent hash and inbox'}) end
if #ARGV - 8 ~= pairs_n then arg_error(9, 'one message id per recipient') end
for i = 9, #ARGV do arg_text(i) end

-- Who is still registered.
local live = {}
for p = 1, pairs_n do
  local instance = redis.call('HGET', KEYS[1 + 2 * p], 'instance_id')
  if instance then live[#live + 1] = {p = p, instance = instance} end
end
local required = price * #live
local ok, available = can_afford(KEYS[1], required)
if not ok then return {'insufficient', #live, int(available)} end
if #live == 0 then return {'ok', {}, {}} end

local ts = now_ms()
move_credits(KEYS[1], KEYS[2], ARGV[1], ts, ARGV[2], ARGV[7], 'charge', 'agent_message', required,
  {broadcast = ARGV[6], recipients = #live})
local reached, ids = {}, {}
for _, r in ipairs(live) do
  local inbox = KEYS[2 + 2 * r.p]
  ensure_inbox(inbox)
  ids[#ids + 1] = redis.call('XADD', inbox, 'MAXLEN', '~', ARGV[4], '*',
    'id', ARGV[8 + r.p], 'from', ARGV[5], 'type', ARGV[6], 'job', ARGV[7], 'reply_to', '',
    'ts', ts, 'payload', ARGV[8])
  reached[#reached + 1] = r.instance
end
return {'ok', reached, ids}
