-- outbox_replay: move stranded outbox events (refused by Postgres and kept
-- by the sink) back into the outbox as new entries with their original
-- fields. The event id travels with them, so writing one again is a no-op
-- for the ledger and cancellations and converges for jobs and invokes.
-- @include none
-- @key stranded the stranded-events stream
-- @key outbox the outbox stream
-- @arg entry... entry ids of `stranded`, each `<ms>-<seq>`, at most 1,000 (all checked before the first replay)
-- @returns (replayed:int, missing:int)

if #ARGV > 1000 then error({err = 'ERR ARGV[1001] is past the most entry ids a call takes (1000)'}) end
for i = 1, #ARGV do
  if not string.match(ARGV[i], '^%d+%-%d+$') or string.len(ARGV[i]) > 41 then
    error({err = 'ERR ARGV[' .. i .. '] must be a stream entry id'})
  end
end
local replayed, missing = 0, 0
for i = 1, #ARGV do
  local r = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #r == 0 then
    missing = missing + 1
  else
    local kv = r[1][2]
    local args = {'XADD', KEYS[2], '*'}
    for j = 1, #kv, 2 do
      local name = string.match(kv[j], '^m%.(.+)$')
      if name then
        args[#args + 1] = name
        args[#args + 1] = kv[j + 1]
      end
    end
    -- An entry with no original fields cannot be an event: leave it for an operator.
    if #args > 3 then
      redis.call(unpack(args))
      redis.call('XDEL', KEYS[1], ARGV[i])
      replayed = replayed + 1
    else
      missing = missing + 1
    end
  end
end
return {replayed, missing}
