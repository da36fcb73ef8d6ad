-- inbox_take: deliver a consumer the next new messages of an inbox, bounded
-- in entries and in bytes (REST receive): it measures the entries after the
-- group's last delivered one, then reads exactly those through the group.
-- A take always has an entry when one is new (a single entry is at most the
-- payload limit). Never blocks. An error NOGROUP when the group is missing.
-- Entries marked read before delivery are acknowledged and left out.
-- @include common group inbox
-- @key inbox the inbox stream (group 'inbox')
-- @key read_early the inbox's read-early zset (entry id -> its ms)
-- @arg consumer the instance id
-- @arg count most entries (1..10000)
-- @arg most_bytes most bytes (>= 1)
-- @returns raw entries as XREADGROUP returns them for one stream ({} when none)

local max_n, max_b = tonumber(ARGV[2]), tonumber(ARGV[3])
if not max_n or max_n < 1 or max_n > 10000 then
  return redis.error_reply('ERR most entries must be 1..10000')
end
if not max_b or max_b < 1 then return redis.error_reply('ERR most bytes must be >= 1') end
if ARGV[1] == '' then return redis.error_reply('ERR consumer must not be empty') end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOGROUP no inbox group for this instance')
end

local _, last = group_state(KEYS[1], 'inbox')
if not last then return redis.error_reply('NOGROUP no inbox group for this instance') end

-- The first read measures one entry; later ones are sized from the average,
-- so at most one entry past the bound is copied (never a chunk of large ones).
local n, bytes, start, chunk = 0, 0, '(' .. last, 1
while n < max_n do
  local want = math.min(chunk, max_n - n)
  local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', want)
  local stop = #chunk < want
  for _, e in ipairs(chunk) do
    local size = entry_bytes(e[2])
    if n > 0 and bytes + size > max_b then stop = true break end
    n = n + 1
    bytes = bytes + size
    start = '(' .. e[1]
  end
  if stop then break end
  local average = math.max(1, math.floor(bytes / math.max(n, 1)))
  chunk = math.max(1, math.min(64, math.floor((max_b - bytes) / average) + 1))
end
if n == 0 then return {} end
local read = redis.call('XREADGROUP', 'GROUP', 'inbox', ARGV[1], 'COUNT', n, 'STREAMS', KEYS[1], '>')
local entries, ids = read[1][2], {}
for i, e in ipairs(entries) do ids[i] = e[1] end
local settled = settle_read_early(KEYS[1], KEYS[2], ids)
if next(settled) == nil then return entries end
local kept = {}
for _, e in ipairs(entries) do
  if not settled[e[1]] then kept[#kept + 1] = e end
end
return kept
