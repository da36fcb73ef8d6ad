-- bb_read: read a blackboard namespace, charged one blackboard read. Sweeps
-- a bounded number of expired entries first, so nothing expired is returned.
-- KEYS[1] credits, KEYS[2..9] the namespace, ARGV[1] namespace, ARGV[2] price
--   (see include/bb.lua)
-- ARGV[3] mode and its arguments:
--   'get' key                        -> {'ok', JSON or ''}
--   'keys' after ('' = start) limit  -> {'ok', key, JSON, key, JSON, ...}
--   'range' min max offset limit     -> {'ok', key, JSON, ...} by score (min/max as ZRANGEBYSCORE takes them)
--   'top' k order ('desc' | 'asc')   -> {'ok', key, JSON, ...}
--   'aggregate'                      -> {'ok', keys, count, sum_micro, min_key, min_json, max_key, max_json}
-- Or {'insufficient', price, available}.

local B = bb_from_keys()
local mode = ARGV[3]
local now = now_ms()
sweep(B, now, 100)
local ok, available = meter(KEYS[1], tonumber(ARGV[2]), 'blackboard_read')
if not ok then return {'insufficient', ARGV[2], int(available)} end

local function with_values(keys)
  local out = {'ok'}
  if #keys == 0 then return out end
  local vals = redis.call('HMGET', B.vals, unpack(keys))
  for i, key in ipairs(keys) do
    out[#out + 1] = key
    out[#out + 1] = vals[i] or ''
  end
  return out
end

if mode == 'get' then
  local key = ARGV[4]
  if expire_if_due(B, key, now) then return {'ok', ''} end
  return {'ok', redis.call('HGET', B.vals, key) or ''}
elseif mode == 'keys' then
  local start = ARGV[4] == '' and '-' or '(' .. ARGV[4]
  return with_values(redis.call('ZRANGEBYLEX', B.lex, start, '+', 'LIMIT', 0, ARGV[5]))
elseif mode == 'range' then
  return with_values(redis.call('ZRANGEBYSCORE', B.score, ARGV[4], ARGV[5], 'LIMIT', ARGV[6], ARGV[7]))
elseif mode == 'top' then
  local k = tonumber(ARGV[4]) - 1
  if ARGV[5] == 'asc' then
    return with_values(redis.call('ZRANGE', B.score, 0, k))
  end
  return with_values(redis.call('ZREVRANGE', B.score, 0, k))
elseif mode == 'aggregate' then
  local a = redis.call('HMGET', B.agg, 'keys', 'count', 'sum')
  local lo = redis.call('ZRANGE', B.score, 0, 0)
  local hi = redis.call('ZRANGE', B.score, -1, -1)
  local out = {'ok', a[1] or '0', a[2] or '0', a[3] or '0', lo[1] or '', '', hi[1] or '', ''}
  if lo[1] then out[6] = redis.call('HGET', B.vals, lo[1]) or '' end
  if hi[1] then out[8] = redis.call('HGET', B.vals, hi[1]) or '' end
  return out
end
return redis.error_reply('ERR unknown read mode ' .. tostring(mode))
