-- dlq_replay: move one dead-lettered message back to the inbox it came from,
-- as a new entry (its message id kept), and remove it from the dead letters.
-- @include common
-- @key dlq the dead-letter stream
-- @key inbox the inbox named by the entry's 'stream' field
-- @arg entry dead-letter entry id
-- @arg inbox_cap MAXLEN ~ of the inbox
-- @reply ok(entry_id:text) the new entry's id
-- @reply missing
-- @reply not_a_message(type:text)
-- @reply wrong_stream

arg_text(1)
arg_int(2, 1, MAX_MINOR)
local r = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #r == 0 then return {'missing'} end
local kv = r[1][2]
local f, original = {}, {}
for i = 1, #kv, 2 do
  f[kv[i]] = kv[i + 1]
  local name = string.match(kv[i], '^m%.(.+)$')
  if name then
    original[#original + 1] = name
    original[#original + 1] = kv[i + 1]
  end
end
if f.type ~= 'message' then return {'not_a_message', f.type or ''} end
if f.stream ~= KEYS[2] then return {'wrong_stream'} end
ensure_inbox(KEYS[2])
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*'}
for _, v in ipairs(original) do args[#args + 1] = v end
args[#args + 1] = 'replayed_from'
args[#args + 1] = ARGV[1]
local id = redis.call(unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return {'ok', id}
