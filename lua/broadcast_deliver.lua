-- broadcast_deliver: deliver a begun broadcast (broadcast_begin) to the next
-- recipients of its list, those at `cursor` onwards, given as key pairs in
-- list order. A recipient still registered (its agent hash names it) gets
-- the message; one that left is skipped. The call that handles the last
-- recipient settles: one spend for the deliveries, one refund for the rest
-- of the reservation, and the broadcast's keys go. Any process may call it,
-- any number at once: `cursor` must be where the broadcast stands, so each
-- recipient is delivered to once.
-- @include common
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @key broadcasts the tenant's broadcasts in delivery (zset)
-- @key record the broadcast's hash
-- @key recipients its recipient list
-- @key (agent, inbox)... the agent hash and inbox stream of each recipient from `cursor` on
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @arg id the broadcast's id
-- @arg inbox_cap MAXLEN ~ of an inbox
-- @arg cursor position in the list of the first recipient given
-- @arg message_id... one message id per recipient
-- @reply ok(done:int, recipients:texts) done is 1 when the broadcast is settled; the instances reached
-- @reply missing the broadcast is over (or never began)
-- @reply moved(cursor:int) another call delivered from `cursor` first

arg_text(1)
arg_text(2)
arg_text(3)
arg_int(4, 1, MAX_MINOR)
local cursor = arg_int(5, 0, 1000000)
local pairs_n = (#KEYS - 5) / 2
if pairs_n ~= math.floor(pairs_n) or pairs_n < 1 or pairs_n > 1000 then
  error({err = 'ERR KEYS must be 1 to 1000 pairs of agent hash and inbox after the first five'})
end
if #ARGV - 5 ~= pairs_n then arg_error(6, 'one message id per recipient') end
for i = 6, #ARGV do arg_text(i) end

local r = redis.call('HMGET', KEYS[4], 'price', 'count', 'cursor', 'delivered', 'from', 'type', 'job', 'payload')
if not r[1] then return {'missing'} end
local price, count, at, delivered = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
if at ~= cursor then return {'moved', at} end
if cursor + pairs_n > count then arg_error(5, 'and the recipients given run past the list') end
local names = redis.call('LRANGE', KEYS[5], cursor, cursor + pairs_n - 1)
if #names ~= pairs_n then return redis.error_reply('ERR the recipient list is shorter than the broadcast') end

local ts = now_ms()
local reached = {}
for p = 1, pairs_n do
  if redis.call('HGET', KEYS[4 + 2 * p], 'instance_id') == names[p] then
    local inbox = KEYS[5 + 2 * p]
    ensure_inbox(inbox)
    redis.call('XADD', inbox, 'MAXLEN', '~', ARGV[4], '*',
      'id', ARGV[5 + p], 'from', r[5], 'type', r[6], 'job', r[7], 'reply_to', '',
      'ts', ts, 'payload', r[8])
    reached[#reached + 1] = names[p]
  end
end
delivered = delivered + #reached
cursor = cursor + pairs_n
if cursor < count then
  redis.call('HSET', KEYS[4], 'cursor', cursor, 'delivered', delivered)
  redis.call('ZADD', KEYS[3], 'XX', ts, ARGV[3])
  return {'ok', 0, reached}
end
local ctx = {broadcast = ARGV[3], type = r[6], recipients = delivered}
move_credits(KEYS[1], KEYS[2], ARGV[1], ts, ARGV[2], r[7], 'spend', 'agent_message', price * delivered, ctx)
move_credits(KEYS[1], KEYS[2], ARGV[1], ts, ARGV[2], r[7], 'refund', 'agent_message',
  price * (count - delivered), ctx)
redis.call('UNLINK', KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[3], ARGV[3])
return {'ok', 1, reached}
