-- credits_move: one credit movement of a tenant, with its ledger event.
-- Refuses (and changes nothing) when the movement would make
-- total - reserved - spent negative, or take more from `reserved` than it holds.
-- Every argument is checked before the first write (amount in [1, MAX_MINOR]).
-- @include common
-- @key credits the tenant's credits hash
-- @key outbox its outbox stream
-- @arg event_base event id base
-- @arg tenant the tenant id
-- @arg operation grant | reserve | spend | refund | charge
-- @arg skill what the movement pays for
-- @arg amount minor units, > 0
-- @arg job job id or ''
-- @arg context MessagePack context map
-- @arg ceiling ceiling of total after a grant (minor units)
-- @reply ok(total:int, reserved:int, spent:int)
-- @reply insufficient(required:int, available:int)
-- @reply over_reserved(required:int, reserved:int)
-- @reply over_ceiling(ceiling:int)

arg_text(1)
arg_text(2)
local op = arg_one_of(3, {grant = true, reserve = true, spend = true, refund = true, charge = true})
arg_text(4)
local amount = arg_int(5, 1, MAX_MINOR)
local ok_ctx, ctx = pcall(cmsgpack.unpack, ARGV[7])
if not ok_ctx or type(ctx) ~= 'table' then arg_error(7, 'must be a MessagePack map') end
local ceiling = arg_int(8, 0, MAX_MINOR)
local total, reserved, spent = balance(KEYS[1])
local available = total - reserved - spent

if (op == 'reserve' or op == 'charge') and amount > available then
  return {'insufficient', int(amount), int(available)}
end
if (op == 'spend' or op == 'refund') and amount > reserved then
  return {'over_reserved', int(amount), int(reserved)}
end
if op == 'grant' and total + amount > ceiling then
  return {'over_ceiling', ARGV[8]}
end

move_credits(KEYS[1], KEYS[2], ARGV[1], now_ms(), ARGV[2], ARGV[6], op, ARGV[4], amount, ctx)
total, reserved, spent = balance(KEYS[1])
return {'ok', int(total), int(reserved), int(spent)}
