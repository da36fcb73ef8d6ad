-- Blackboard helpers (prepended after common.lua). A namespace's keys are a
-- table B: vals (hash key -> compact JSON), nums (hash key -> micro-units of
-- numeric values), lex (zset by key), score (zset of numeric entries by
-- value), agg (hash: keys, count, sum in micro-units), exp (zset key ->
-- expiry ms), fence (hash lock -> last fencing token), namespaces (the
-- tenant's set of namespaces with expiring entries), names (the tenant's
-- set of every namespace written to, for listing), ns (its name).
-- Numbers are aggregated as integer micro-units (10^-6), so the sum stays
-- exact under any sequence of writes, and it cannot overflow: agg keeps it
-- in two fields, sum (|sum| < 10^12 between calls) and sum_hi (units of
-- 10^12), the total being sum_hi * 10^12 + sum. Bounds relied on: every
-- number added or removed is at most 9e15 micro-units in magnitude (callers
-- aggregate nothing larger), so sum stays below 2^53, exact in a Lua
-- double, before it carries.
-- The blackboard scripts' first KEYS and ARGV (`@layout bb`):
-- @key credits the tenant's credits hash
-- @key vals the namespace's values hash
-- @key nums its numeric values hash (micro-units)
-- @key lex its keys zset
-- @key score its numeric entries zset (by value)
-- @key agg its aggregates hash
-- @key exp its expiries zset
-- @key fence its fencing tokens hash
-- @key namespaces the tenant's namespaces-with-expiries set
-- @key names the tenant's set of every namespace written to
-- @arg namespace the namespace's name
-- @arg price of the operation (minor units)

local function bb_from_keys()
  arg_text(1)
  arg_int(2, 0, MAX_MINOR)
  return {vals = KEYS[2], nums = KEYS[3], lex = KEYS[4], score = KEYS[5], agg = KEYS[6],
    exp = KEYS[7], fence = KEYS[8], namespaces = KEYS[9], names = KEYS[10], ns = ARGV[1]}
end

-- The namespace `ns` of a tenant, from the prefixes keys.rs gives: `root`
-- (its blackboard keys' common prefix) and `namespaces` (its set of
-- namespaces with expiring entries). The suffixes are those of
-- TenantKeys::blackboard (tests/it/money.rs and blackboard.rs read what a
-- job aggregated back through those).
local function bb_named(root, namespaces, names, ns)
  local p = root .. ns .. ':'
  return {vals = p .. 'vals', nums = p .. 'nums', lex = p .. 'lex', score = p .. 'score',
    agg = p .. 'agg', exp = p .. 'exp', fence = p .. 'fence', namespaces = namespaces,
    names = names, ns = ns}
end

-- Charges a blackboard operation. High-frequency charges are metered: the
-- balance moves now, the ledger event comes with the next flush
-- (credits_flush.lua), which emits one charge per skill.
local function meter(credits_key, price, skill)
  if price == 0 then return true, 0 end
  local ok, available = can_afford(credits_key, price)
  if not ok then return false, available end
  redis.call('HINCRBY', credits_key, 'spent', price)
  redis.call('HINCRBY', credits_key, 'unbilled:' .. skill, price)
  return true, available
end

local SUM_LIMB = 1000000000000

-- Adds `micro` (a number, |micro| <= 9e15) to the namespace's sum, carrying
-- into sum_hi so neither field ever nears the i64 limit.
local function agg_add(B, micro)
  local lo = redis.call('HINCRBY', B.agg, 'sum', int(micro))
  if lo >= SUM_LIMB or lo <= -SUM_LIMB then
    local rest = math.fmod(lo, SUM_LIMB)
    local carry = (lo - rest) / SUM_LIMB
    redis.call('HINCRBY', B.agg, 'sum_hi', int(carry))
    redis.call('HINCRBY', B.agg, 'sum', int(-carry * SUM_LIMB))
  end
end

-- Removes an entry from value, indexes and aggregates.
local function bb_remove(B, key)
  local old = redis.call('HGET', B.nums, key)
  if old then
    redis.call('HINCRBY', B.agg, 'count', -1)
    agg_add(B, -tonumber(old))
    redis.call('HDEL', B.nums, key)
    redis.call('ZREM', B.score, key)
  end
  if redis.call('HDEL', B.vals, key) == 1 then
    redis.call('HINCRBY', B.agg, 'keys', -1)
  end
  redis.call('ZREM', B.lex, key)
  redis.call('ZREM', B.exp, key)
end

-- Writes an entry: value, indexes, aggregates, expiry (0 = none).
-- micro is the value in micro-units, or '' when it is not a number.
local function bb_put(B, key, json, micro, expire_at)
  redis.call('SADD', B.names, B.ns)
  local old = redis.call('HGET', B.nums, key)
  if old then
    redis.call('HINCRBY', B.agg, 'count', -1)
    agg_add(B, -tonumber(old))
  end
  if redis.call('HSET', B.vals, key, json) == 1 then
    redis.call('HINCRBY', B.agg, 'keys', 1)
    redis.call('ZADD', B.lex, 0, key)
  end
  if micro ~= '' then
    redis.call('HSET', B.nums, key, micro)
    redis.call('ZADD', B.score, tonumber(micro) / 1000000, key)
    redis.call('HINCRBY', B.agg, 'count', 1)
    agg_add(B, tonumber(micro))
  elseif old then
    redis.call('HDEL', B.nums, key)
    redis.call('ZREM', B.score, key)
  end
  if expire_at > 0 then
    redis.call('ZADD', B.exp, expire_at, key)
    redis.call('SADD', B.namespaces, B.ns)
  else
    redis.call('ZREM', B.exp, key)
  end
end

-- True (and the entry removed) when the key's expiry has passed.
-- Whether `key`'s expiry has passed (read only: a script decides first, and
-- removes it with bb_remove only once nothing can refuse the call).
local function is_due(B, key, now)
  local at = redis.call('ZSCORE', B.exp, key)
  return at ~= false and at ~= nil and tonumber(at) <= now
end

local function expire_if_due(B, key, now)
  local at = redis.call('ZSCORE', B.exp, key)
  if at and tonumber(at) <= now then
    bb_remove(B, key)
    return true
  end
  return false
end

-- Removes up to `limit` entries whose expiry has passed. Returns how many.
local function sweep(B, now, limit)
  local due = redis.call('ZRANGEBYSCORE', B.exp, '-inf', now, 'LIMIT', 0, limit)
  for _, key in ipairs(due) do bb_remove(B, key) end
  return #due
end

-- A stale fencing token (a newer lock acquisition happened) refuses a write.
local function fenced_out(B, lock, token)
  if lock == '' then return false end
  local current = tonumber(redis.call('HGET', B.fence, lock) or '0')
  return tonumber(token) ~= current
end

-- Micro-units as JSON number text (no trailing zeros).
local function micro_to_json(m)
  local sign = m < 0 and '-' or ''
  m = math.abs(m)
  local whole = math.floor(m / 1000000)
  local frac = m - whole * 1000000
  if frac == 0 then return sign .. string.format('%d', whole) end
  local digits = string.gsub(string.format('%06d', frac), '0+$', '')
  return sign .. string.format('%d', whole) .. '.' .. digits
end
