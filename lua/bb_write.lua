-- bb_write: set, compare-and-set or delete one blackboard entry, with its
-- indexes and aggregates, charged one blackboard write.
-- @include common bb
-- @layout bb
-- @arg mode 'set' | 'cas' | 'delete'
-- @arg key the entry's key
-- @arg value new JSON value
-- @arg micro its micro-units, or '' when not a number
-- @arg ttl time to live (ms, 0 = none)
-- @arg expected cas: expected JSON value, or '' for "must be absent"
-- @arg fence_lock fencing lock name or ''
-- @arg fence_token fencing token
-- @reply ok(existed:int)
-- @reply mismatch(current:text) current JSON value or ''
-- @reply fenced
-- @reply insufficient(price:int, available:int)

local B = bb_from_keys()
local mode, key = arg_one_of(3, {set = true, cas = true, delete = true}), arg_text(4)
if ARGV[6] ~= '' then arg_int(6, -9000000000000000, 9000000000000000) end
arg_int(7, 0, 315360000000)
if ARGV[9] ~= '' then arg_digits(10) end
if fenced_out(B, ARGV[9], ARGV[10]) then return {'fenced'} end
local now = now_ms()
-- An expired entry counts as absent; it is removed only after the checks
-- and the charge, so a refused call writes nothing.
local due = is_due(B, key, now)
local current = not due and redis.call('HGET', B.vals, key) or nil
if mode == 'cas' then
  local expected = ARGV[8]
  if (expected == '' and current) or (expected ~= '' and current ~= expected) then
    return {'mismatch', current or ''}
  end
end
local ok, available = meter(KEYS[1], tonumber(ARGV[2]), 'blackboard_write')
if not ok then return {'insufficient', ARGV[2], int(available)} end
if due then bb_remove(B, key) end
if mode == 'delete' then
  bb_remove(B, key)
else
  local ttl = tonumber(ARGV[7])
  bb_put(B, key, ARGV[5], ARGV[6], ttl > 0 and now + ttl or 0)
end
return {'ok', current and 1 or 0}
