-- message_broadcast: send one message to every recipient, all or nothing:
-- the price of every delivery is checked first and charged once (one ledger
-- event); with too little credit nothing is delivered or charged.
-- Includes: common
-- KEYS[1] credits hash   KEYS[2] outbox stream
-- KEYS[3..] pairs of (recipient agent hash, recipient inbox stream)
-- ARGV[1] event id base  ARGV[2] tenant  ARGV[3] price per delivery (minor units)
-- ARGV[4] inbox cap (MAXLEN ~)   ARGV[5] from instance   ARGV[6] message type
-- ARGV[7] job id         ARGV[8] MessagePack payload
-- ARGV[9..] one message id per recipient pair
-- Returns {'ok', {recipient instance...}, {entry id...}} for those still
-- registered (deregistered ones are skipped, not charged)
--       | {'insufficient', recipients, available} (required = recipients x price:
--         computed by the caller, as it may pass what a double holds exactly)

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
