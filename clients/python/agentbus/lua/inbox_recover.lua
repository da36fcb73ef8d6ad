-- inbox_recover: re-create an inbox's consumer group after it went missing
-- (Redis came back without the stream, or the group was destroyed), but only
-- while the instance is registered: a deregistered instance stays gone.
-- The group starts at 0, so every retained entry is delivered (again): after
-- losing the acknowledgements, at-least-once means redelivery, never loss.
-- @include none
-- @key inbox the inbox stream
-- @key agent the instance's hash
-- @arg group the group name
-- @returns int 1 when the group exists now, 0 when the instance is not registered

if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP') then
  return redis.error_reply(created.err)
end
return 1
