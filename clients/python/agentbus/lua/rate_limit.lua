-- rate_limit: one request of a token against its rate (GCRA): allowed while
-- the token's theoretical arrival time stays within the burst allowance.
-- @include none
-- @key limit the token's rate-limit key (its theoretical arrival time, ms)
-- @arg rate requests per second
-- @arg burst requests
-- @returns (allowed:int, wait_ms:int) {1, 0} when allowed, {0, ms to wait} when not

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = 1000 / tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local next_tat = tat + interval
if next_tat - tolerance > now then
  return {0, math.ceil(next_tat - tolerance - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return {1, 0}
