-- inbox_poison: dead-letter inbox entries whose payload cannot be decoded,
-- each alone and with its own reason, the moment a consumer first reads
-- them; the rest of the batch is delivered as usual. Entries already gone
-- are skipped. Every argument is checked before the first write.
-- @include common
-- @key inbox the inbox stream
-- @key dlq the dead-letter stream
-- @arg (entry, reason)... a stream id and its reason (at most 1024 bytes)
-- @returns int the number dead-lettered

if #ARGV % 2 ~= 0 then return redis.error_reply('ERR arguments come in pairs: entry id, reason') end
for i = 1, #ARGV, 2 do
  if not string.match(ARGV[i], '^%d+%-%d+$') then
    return redis.error_reply('ERR entry id ' .. (i + 1) / 2 .. ' is not a stream id')
  end
  if #ARGV[i + 1] > 1024 then
    return redis.error_reply('ERR reason ' .. (i + 1) / 2 .. ' is longer than 1024 bytes')
  end
end
local dead = 0
for i = 1, #ARGV, 2 do
  dead = dead + dead_letter_message(KEYS[1], KEYS[2], ARGV[i], ARGV[i + 1], 1, false)
end
return dead
