-- inbox_settle_read: of the entries a blocking reader was just handed
-- (XREADGROUP cannot run in a script), acknowledge and forget those marked
-- read before delivery (inbox_mark_read); the reader drops them. A reader
-- calls it only when the read-early zset was non-empty at its read.
-- @include inbox
-- @key inbox the inbox stream (group 'inbox')
-- @key read_early the inbox's read-early zset (entry id -> its ms)
-- @arg entry... entry ids just delivered, each `<ms>-<seq>`, 1 to 10,000
-- @returns raw the entry ids that were marked read (now acknowledged)

entry_id_args(10000)
local settled = settle_read_early(KEYS[1], KEYS[2], ARGV)
local out = {}
for i = 1, #ARGV do
  if settled[ARGV[i]] then out[#out + 1] = ARGV[i] end
end
return out
