-- inbox_poison: dead-letter inbox entries whose payload cannot be decoded,
-- each alone, the moment a consumer first reads them; the rest of the batch
-- is delivered as usual. Entries already gone are skipped.
-- KEYS[1] inbox stream   KEYS[2] dead-letter stream
-- ARGV[1] reason (text)  ARGV[2..] entry ids
-- Returns the number dead-lettered.

if #ARGV < 2 then return 0 end
for i = 2, #ARGV do
  if not string.match(ARGV[i], '^%d+%-%d+$') then
    return redis.error_reply('ERR entry id ' .. i - 1 .. ' is not a stream id')
  end
end
local dead = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local r = redis.call('XRANGE', KEYS[1], id, id)
  if r[1] then
    local args = {'XADD', KEYS[2], '*', 'type', 'message', 'stream', KEYS[1], 'entry', id,
      'reason', ARGV[1], 'deliveries', 1, 'ts', now_ms()}
    local kv = r[1][2]
    for j = 1, #kv, 2 do
      args[#args + 1] = 'm.' .. kv[j]
      args[#args + 1] = kv[j + 1]
    end
    redis.call(unpack(args))
    redis.call('XACK', KEYS[1], 'inbox', id)
    redis.call('XDEL', KEYS[1], id)
    dead = dead + 1
  end
end
return dead
