-- inbox_mark_read: mark messages of an inbox read by entry id, delivered or
-- not (the original's flow: list the inbox, then mark one read). A
-- delivered, unacknowledged one is acknowledged; one not yet delivered goes
-- into the read-early zset, which every reader consults (inbox_take here,
-- inbox_settle_read for blocking readers) so it is never handed out. Entries
-- already read, or not in the inbox, are skipped. Marks the zset keeps for
-- entries trimmed or delivered since are dropped here, so it stays within
-- the inbox's own entries. Every argument is checked before the first write.
-- @include group inbox
-- @key inbox the inbox stream (group 'inbox')
-- @key read_early the inbox's read-early zset (entry id -> its ms)
-- @arg entry... entry ids, each `<ms>-<seq>`, 1 to 1,000
-- @returns int how many were unread and are now read

entry_id_args(1000)
-- Delivered ones first (the usual case: one XACK each, nothing else read).
local read, rest = 0, {}
for i = 1, #ARGV do
  if redis.call('XACK', KEYS[1], 'inbox', ARGV[i]) == 1 then
    read = read + 1
  else
    rest[#rest + 1] = ARGV[i]
  end
end
if #rest == 0 or redis.call('EXISTS', KEYS[1]) == 0 then return read end
local _, last = group_state(KEYS[1], 'inbox')
if not last then return read end

local function parts(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
-- a > b for stream ids (milliseconds below 2^53: exact as Lua numbers).
local function after(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am > bm or (am == bm and as > bs)
end

local marked = 0
for _, id in ipairs(rest) do
  if after(id, last) and #redis.call('XRANGE', KEYS[1], id, id) > 0 then
    marked = marked + redis.call('ZADD', KEYS[2], 'NX', (parts(id)), id)
  end
end
if marked > 0 then
  -- Entries before the first kept one were trimmed; those up to the last
  -- delivered one were settled by their reader (or are held by it).
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  local floor = math.max(first and (parts(first[1])) or 0, (parts(last)))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', floor))
end
return read + marked
