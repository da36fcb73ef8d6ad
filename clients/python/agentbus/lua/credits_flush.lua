-- credits_flush: turn metered charges (already in `spent`) into ledger
-- events: one `charge` per skill for everything accumulated since the last
-- flush, so the ledger sums match the balance again.
-- @include common
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @returns int the total amount flushed (minor units)

arg_text(1)
arg_text(2)

local fields = redis.call('HGETALL', KEYS[1])
local ts, total = now_ms(), 0
for i = 1, #fields, 2 do
  local skill = string.match(fields[i], '^unbilled:(.+)$')
  local amount = tonumber(fields[i + 1])
  if skill and amount and amount > 0 then
    ledger(KEYS[2], ARGV[1], ts, ARGV[2], '', 'charge', skill, amount, {metered = true})
    redis.call('HSET', KEYS[1], fields[i], 0)
    total = total + amount
  end
end
return int(total)
