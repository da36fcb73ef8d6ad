-- Shared helpers, prepended to every script whose header says `@include
-- common` (build.rs; Lua has no include). Money is integer minor units;
-- numbers pass through int() before reaching Redis so large values never
-- turn into "1e+15".

local function int(n)
  return string.format('%d', n)
end

-- Argument checks, for the top of a script (before its first write): a bad
-- argument aborts the whole script with an error reply naming it.
-- Amounts never pass MAX_MINOR (src/money.rs), so every balance, being at
-- most a tenant's total, stays below 2^53 and exact in a Lua double.
local MAX_MINOR = 1000000000000000

local function arg_error(i, what)
  error({err = 'ERR ARGV[' .. i .. '] ' .. what})
end

-- ARGV[i] as a number when it is an integer written in decimal digits (no
-- exponent, fraction or hex, which tonumber would take), else nil.
local function decimal_arg(i)
  local s = ARGV[i]
  return s and string.match(s, '^%-?%d+$') and string.len(s) <= 20 and tonumber(s) or nil
end

-- ARGV[i] as an integer in [lo, hi].
local function arg_int(i, lo, hi)
  local n = decimal_arg(i)
  if not n or n < lo or n > hi then
    arg_error(i, 'must be an integer in [' .. string.format('%d', lo) .. ', '
      .. string.format('%d', hi) .. ']')
  end
  return n
end

-- ARGV[i] as an integer of any size a client may send (a fencing token):
-- decimal digits only, compared as a number.
local function arg_digits(i)
  local n = decimal_arg(i)
  if not n then arg_error(i, 'must be an integer') end
  return n
end

-- ARGV[i], which must not be empty.
local function arg_text(i)
  if ARGV[i] == nil or ARGV[i] == '' then arg_error(i, 'must not be empty') end
  return ARGV[i]
end

-- ARGV[i], which must be one of the keys of `set`.
local function arg_one_of(i, set)
  if ARGV[i] == nil or not set[ARGV[i]] then arg_error(i, 'is not an accepted value') end
  return ARGV[i]
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Event ids: the caller passes one unique base per call; the n-th event of
-- the call gets "<base>.<n>".
local event_seq = 0
local function next_event_id(base)
  event_seq = event_seq + 1
  return base .. '.' .. event_seq
end

-- Balance of a credits hash as {total, reserved, spent}.
local function balance(credits_key)
  local v = redis.call('HMGET', credits_key, 'total', 'reserved', 'spent')
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
end

-- Appends a ledger event (one credit movement) to the tenant's outbox.
local function ledger(outbox, event_base, ts, tenant, job, op, skill, amount, ctx)
  redis.call('XADD', outbox, '*',
    'type', 'ledger', 'id', next_event_id(event_base), 'ts', ts,
    'tenant', tenant, 'job', job, 'op', op, 'skill', skill,
    'amount', int(amount), 'ctx', cmsgpack.pack(ctx))
end

-- Moves `amount` between the buckets of a credits hash and records it.
-- Operations: grant (total+), reserve (reserved+), spend (reserved- spent+),
-- refund (reserved-), charge (spent+). Callers check preconditions first.
local function move_credits(credits_key, outbox, event_base, ts, tenant, job, op, skill, amount, ctx)
  if amount == 0 then return end
  if op == 'grant' then
    redis.call('HINCRBY', credits_key, 'total', int(amount))
  elseif op == 'reserve' then
    redis.call('HINCRBY', credits_key, 'reserved', int(amount))
  elseif op == 'spend' then
    redis.call('HINCRBY', credits_key, 'reserved', int(-amount))
    redis.call('HINCRBY', credits_key, 'spent', int(amount))
  elseif op == 'refund' then
    redis.call('HINCRBY', credits_key, 'reserved', int(-amount))
  elseif op == 'charge' then
    redis.call('HINCRBY', credits_key, 'spent', int(amount))
  else
    return redis.error_reply('ERR unknown credit operation ' .. tostring(op))
  end
  ledger(outbox, event_base, ts, tenant, job, op, skill, amount, ctx)
end

-- Whether the tenant can pay `amount` now; also answers what is available.
local function can_afford(credits_key, amount)
  local total, reserved, spent = balance(credits_key)
  local available = total - reserved - spent
  return amount <= available, available
end

-- Creates an inbox stream and its consumer group if the stream is missing.
local function ensure_inbox(inbox_key)
  if redis.call('EXISTS', inbox_key) == 0 then
    redis.call('XGROUP', 'CREATE', inbox_key, 'inbox', '0', 'MKSTREAM')
  end
end

-- Drops the entries of a stream that its consumer group is done with:
-- everything below the oldest pending entry (or up to the last delivered one
-- when none is pending). Approximate (whole stream nodes), so it stays cheap.
local function trim_acked(stream, group)
  local summary = redis.call('XPENDING', stream, group)
  local min_id = summary[2]
  if not min_id then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      local info = {}
      for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
      if info['name'] == group then
        local ms, seq = string.match(info['last-delivered-id'], '^(%d+)%-(%d+)$')
        if ms then min_id = ms .. '-' .. (tonumber(seq) + 1) end
      end
    end
  end
  if min_id then redis.call('XTRIM', stream, 'MINID', '~', min_id) end
end

-- Bytes of an entry's field values (`kv` as XRANGE returns them): what
-- byte-bounded reads count.
local function entry_bytes(kv)
  local size = 0
  for j = 2, #kv, 2 do size = size + #kv[j] end
  return size
end

-- Moves one inbox entry to the dead-letter stream: its fields kept as
-- `m.<field>`, then acknowledged and deleted from the inbox. An entry no
-- longer in the stream (trimmed) is still recorded when `record_missing`;
-- otherwise it is skipped. Answers 1 when recorded, else 0.
local function dead_letter_message(inbox, dlq, id, reason, deliveries, record_missing)
  local r = redis.call('XRANGE', inbox, id, id)
  if not r[1] and not record_missing then return 0 end
  local args = {'XADD', dlq, '*', 'type', 'message', 'stream', inbox, 'entry', id,
    'reason', reason, 'deliveries', deliveries, 'ts', now_ms()}
  if r[1] then
    local kv = r[1][2]
    for i = 1, #kv, 2 do
      args[#args + 1] = 'm.' .. kv[i]
      args[#args + 1] = kv[i + 1]
    end
  end
  redis.call(unpack(args))
  redis.call('XACK', inbox, 'inbox', id)
  redis.call('XDEL', inbox, id)
  return 1
end
