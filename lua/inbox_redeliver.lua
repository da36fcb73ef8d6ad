-- inbox_redeliver: hand a consumer back its own unacknowledged messages that
-- have been idle for at least ARGV[2] ms (after a crash or a failed handler);
-- a message delivered ARGV[3] times already goes to the dead-letter stream.
-- Includes: common (dead_letter_message)
-- KEYS[1] inbox stream   KEYS[2] dead-letter stream
-- ARGV[1] consumer (the instance id)  ARGV[2] minimum idle (ms)
-- ARGV[3] most deliveries  ARGV[4] most entries per call
-- Returns {entries, dead_lettered} with entries as XCLAIM returns them.

if redis.call('EXISTS', KEYS[1]) == 0 then return {{}, 0} end
local pending = redis.call('XPENDING', KEYS[1], 'inbox', 'IDLE', ARGV[2], '-', '+', ARGV[4], ARGV[1])
local again, dead = {}, 0
local max = tonumber(ARGV[3])
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
if #again > 0 then
  entries = redis.call('XCLAIM', KEYS[1], 'inbox', ARGV[1], 0, unpack(again))
end
return {entries, dead}
