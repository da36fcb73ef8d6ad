-- bb_read: read a blackboard namespace, charged one blackboard read. Sweeps
-- a bounded number of expired entries first, so nothing expired is returned.
-- `mode` and its arguments (`params`), and what `ok` holds for each:
--   'get' key                        -> JSON or ''
--   'keys' after ('' = start) limit [prefix]
--                                    -> key, JSON, key, JSON, ... (in key order; with a
--                                       prefix, only keys starting with it: O(log n + page))
--   'range' min max offset limit     -> key, JSON, ... by score (min/max as ZRANGEBYSCORE takes them);
--                                       found by rank, so a deep offset costs O(log n), not a walk
--   'top' k order ('desc' | 'asc')   -> key, JSON, ...
--   'aggregate'                      -> keys, count, sum_micro, min_key, min_json, max_key, max_json,
--                                       sum_hi (sum = sum_hi * 10^12 + sum_micro, see include/bb.lua)
-- @include common bb
-- @layout bb
-- @arg mode get | keys | range | top | aggregate
-- @arg params... the mode's arguments
-- @reply ok(values:rest)
-- @reply insufficient(price:int, available:int)

local B = bb_from_keys()
local mode = arg_one_of(3, {get = true, keys = true, range = true, top = true, aggregate = true})
-- A score bound as ZRANGEBYSCORE takes it: [(]number, or -inf / +inf.
local function arg_score(i)
  local s = string.gsub(ARGV[i] or '', '^%(', '')
  if s ~= '-inf' and s ~= '+inf' and s ~= 'inf' and not tonumber(s) then
    arg_error(i, 'must be a score bound')
  end
end
if mode == 'get' then arg_text(4)
elseif mode == 'keys' then
  arg_int(5, 1, 1000)
  if ARGV[6] and string.len(ARGV[6]) > 256 then arg_error(6, 'a prefix is at most 256 bytes') end
elseif mode == 'range' then
  arg_score(4)
  arg_score(5)
  arg_int(6, 0, 1000000000)
  arg_int(7, 1, 1000)
elseif mode == 'top' then
  arg_int(4, 1, 1000)
  arg_one_of(5, {asc = true, desc = true})
end
local now = now_ms()
-- Charged first: a refused read sweeps nothing (it writes nothing).
local ok, available = meter(KEYS[1], tonumber(ARGV[2]), 'blackboard_read')
if not ok then return {'insufficient', ARGV[2], int(available)} end
sweep(B, now, 100)

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
  local after, prefix = ARGV[4], ARGV[6] or ''
  local start = after == '' and '-' or '(' .. after
  local stop = '+'
  if prefix ~= '' then
    -- Keys are UTF-8, which never holds the byte 0xFF: every key starting
    -- with the prefix sorts below prefix .. 0xFF. Compared as bytes (Lua's
    -- `<` follows the locale).
    local function below(a, b)
      for i = 1, math.min(#a, #b) do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x < y end
      end
      return #a < #b
    end
    if after == '' or below(after, prefix) then start = '[' .. prefix end
    stop = '(' .. prefix .. '\255'
  end
  return with_values(redis.call('ZRANGEBYLEX', B.lex, start, stop, 'LIMIT', 0, ARGV[5]))
elseif mode == 'range' then
  -- Ranks of the range's ends (ZCOUNT is O(log n)); what sorts before the
  -- lower bound is everything up to its complement.
  local min = ARGV[4]
  local below = 0
  if min ~= '-inf' then
    local open = string.sub(min, 1, 1) == '('
    local bound = open and string.sub(min, 2) or '(' .. min
    below = redis.call('ZCOUNT', B.score, '-inf', bound)
  end
  local last = redis.call('ZCOUNT', B.score, '-inf', ARGV[5]) - 1
  local first = below + tonumber(ARGV[6])
  if first > last then return {'ok'} end
  return with_values(redis.call('ZRANGE', B.score, first,
    math.min(last, first + tonumber(ARGV[7]) - 1)))
elseif mode == 'top' then
  local k = tonumber(ARGV[4]) - 1
  if ARGV[5] == 'asc' then
    return with_values(redis.call('ZRANGE', B.score, 0, k))
  end
  return with_values(redis.call('ZREVRANGE', B.score, 0, k))
elseif mode == 'aggregate' then
  local a = redis.call('HMGET', B.agg, 'keys', 'count', 'sum', 'sum_hi')
  local lo = redis.call('ZRANGE', B.score, 0, 0)
  local hi = redis.call('ZRANGE', B.score, -1, -1)
  local out = {'ok', a[1] or '0', a[2] or '0', a[3] or '0', lo[1] or '', '', hi[1] or '', '',
    a[4] or '0'}
  if lo[1] then out[6] = redis.call('HGET', B.vals, lo[1]) or '' end
  if hi[1] then out[8] = redis.call('HGET', B.vals, hi[1]) or '' end
  return out
end
return redis.error_reply('ERR unknown read mode ' .. tostring(mode))
