-- inbox_redeliver: hand a consumer back its own unacknowledged messages that
-- have been idle for at least `min_idle` ms (after a crash or a failed
-- handler); a message delivered `most_deliveries` times already goes to the
-- dead-letter stream.
-- @include common
-- @key inbox the inbox stream
-- @key dlq the dead-letter stream
-- @arg consumer the instance id
-- @arg min_idle ms
-- @arg most_deliveries deliveries before a message is dead-lettered
-- @arg count most entries per call
-- @arg most_bytes most bytes of field values handed back ('' for no bound;
--   a call hands back at least one entry when one is due)
-- @returns (entries:raw, dead_lettered:int) entries as XCLAIM returns them

local min_idle, max, count = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[1] == '' then return redis.error_reply('ERR consumer must not be empty') end
if not min_idle or min_idle < 0 then return redis.error_reply('ERR minimum idle must be >= 0') end
if not max or max < 1 then return redis.error_reply('ERR most deliveries must be >= 1') end
if not count or count < 1 or count > 10000 then
  return redis.error_reply('ERR most entries must be 1..10000')
end
local max_b = nil
if ARGV[5] ~= '' then
  max_b = tonumber(ARGV[5])
  if not max_b or max_b < 1 then return redis.error_reply('ERR most bytes must be >= 1') end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {{}, 0} end
local pending = redis.call('XPENDING', KEYS[1], 'inbox', 'IDLE', ARGV[2], '-', '+', ARGV[4], ARGV[1])
local again, dead = {}, 0
for _, p in ipairs(pending) do
  local id, deliveries = p[1], tonumber(p[4])
  if deliveries >= max then
    dead = dead + dead_letter_message(KEYS[1], KEYS[2], id,
      'delivered ' .. deliveries .. ' times without acknowledgement', deliveries, true)
  else
    again[#again + 1] = id
  end
end
local entries = {}
if #again > 0 and not max_b then
  entries = redis.call('XCLAIM', KEYS[1], 'inbox', ARGV[1], 0, unpack(again))
elseif #again > 0 then
  -- Measured before claimed: one past the bound stays pending, untouched.
  local bytes = 0
  for _, id in ipairs(again) do
    local r = redis.call('XRANGE', KEYS[1], id, id)
    local size = r[1] and entry_bytes(r[1][2]) or 0
    if #entries > 0 and bytes + size > max_b then break end
    local claimed = redis.call('XCLAIM', KEYS[1], 'inbox', ARGV[1], 0, id)
    if claimed[1] then
      entries[#entries + 1] = claimed[1]
      bytes = bytes + size
    end
  end
end
return {entries, dead}
