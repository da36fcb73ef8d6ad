-- bb_increment: add to a numeric entry (absent counts as 0), exactly, in
-- micro-units; charged one blackboard write. Keeps the entry's expiry.
-- @include common bb
-- @layout bb
-- @arg key the entry's key
-- @arg amount micro-units
-- @arg fence_lock fencing lock name or ''
-- @arg fence_token fencing token
-- @reply ok(value:text) the new JSON value
-- @reply not_a_number(current:text) the current JSON value
-- @reply fenced
-- @reply out_of_range
-- @reply insufficient(price:int, available:int)

local B = bb_from_keys()
local key, delta = arg_text(3), arg_int(4, -18000000000000000, 18000000000000000)
if ARGV[5] ~= '' then arg_digits(6) end
if fenced_out(B, ARGV[5], ARGV[6]) then return {'fenced'} end
local now = now_ms()
-- An expired entry counts as absent (0); removed only once nothing refuses.
local due = is_due(B, key, now)
local current = not due and redis.call('HGET', B.vals, key) or nil
local old = 0
if current then
  local micro = redis.call('HGET', B.nums, key)
  if not micro then return {'not_a_number', current} end
  old = tonumber(micro)
end
local new = old + delta
-- Doubles count integers exactly up to 2^53: stay well inside.
if math.abs(new) > 9000000000000000 then return {'out_of_range'} end
local ok, available = meter(KEYS[1], tonumber(ARGV[2]), 'blackboard_write')
if not ok then return {'insufficient', ARGV[2], int(available)} end
if due then bb_remove(B, key) end
local json = micro_to_json(new)
local expire_at = tonumber(redis.call('ZSCORE', B.exp, key) or '0')
bb_put(B, key, json, int(new), expire_at)
return {'ok', json}
