-- credits_move: one credit movement of a tenant, with its ledger event.
-- Refuses (and changes nothing) when the movement would make
-- total - reserved - spent negative, or take more from `reserved` than it holds.
-- KEYS[1] credits hash   KEYS[2] outbox stream
-- ARGV[1] event id base  ARGV[2] tenant  ARGV[3] operation
--   (grant | reserve | spend | refund | charge)
-- ARGV[4] skill          ARGV[5] amount (minor units, > 0)
-- ARGV[6] job id or ''   ARGV[7] MessagePack context map
-- ARGV[8] ceiling of total after a grant (minor units)
-- Returns {'ok', total, reserved, spent} | {'insufficient', required, available}
--       | {'over_reserved', required, reserved} | {'over_ceiling', ceiling}

local op, amount = ARGV[3], tonumber(ARGV[5])
local total, reserved, spent = balance(KEYS[1])
local available = total - reserved - spent

if (op == 'reserve' or op == 'charge') and amount > available then
  return {'insufficient', int(amount), int(available)}
end
if (op == 'spend' or op == 'refund') and amount > reserved then
  return {'over_reserved', int(amount), int(reserved)}
end
if op == 'grant' and total + amount > tonumber(ARGV[8]) then
  return {'over_ceiling', ARGV[8]}
end

move_credits(KEYS[1], KEYS[2], ARGV[1], now_ms(), ARGV[2], ARGV[6], op, ARGV[4], amount,
  cmsgpack.unpack(ARGV[7]))
total, reserved, spent = balance(KEYS[1])
return {'ok', int(total), int(reserved), int(spent)}
