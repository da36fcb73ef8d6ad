-- stream_page: one page of a stream, bounded in entries and in bytes. It
-- reads in chunks of 32, so a page holds at most ARGV[3] bytes of field
-- values plus one entry (a page always has an entry when one is left).
-- Reads only.
-- Includes: none
-- KEYS[1] stream   KEYS[2] a key that must exist (the stream itself, or e.g.
--                  the job hash of a results stream)
-- ARGV[1] start: '-' or '(<id>' (after that entry)
-- ARGV[2] most entries (1..10000)   ARGV[3] most bytes (>= 1)
-- Returns {'missing'} when KEYS[2] does not exist, else {'ok', entries, more}
-- with entries as XRANGE returns them and more = 1 when the page stopped at
-- a bound (entries may follow) or 0 at the end of the stream.

local start = ARGV[1]
local max_n, max_b = tonumber(ARGV[2]), tonumber(ARGV[3])
if start ~= '-' and not string.match(start, '^%(%d+%-%d+$') then
  return redis.error_reply('ERR start must be - or (<stream id>')
end
if not max_n or max_n < 1 or max_n > 10000 then
  return redis.error_reply('ERR most entries must be 1..10000')
end
if not max_b or max_b < 1 then return redis.error_reply('ERR most bytes must be >= 1') end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing'} end

local out, bytes = {}, 0
while #out < max_n do
  local want = math.min(32, max_n - #out)
  local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', want)
  for _, e in ipairs(chunk) do
    local size, kv = 0, e[2]
    for j = 2, #kv, 2 do size = size + #kv[j] end
    if #out > 0 and bytes + size > max_b then return {'ok', out, 1} end
    out[#out + 1] = e
    bytes = bytes + size
    start = '(' .. e[1]
  end
  if #chunk < want then return {'ok', out, 0} end
end
return {'ok', out, 1}
