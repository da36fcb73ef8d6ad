-- Registry indexes: zsets of instance ids scored by last heartbeat (ms), one
-- per agent type, job and stored status, so a filtered listing reads only
-- its matches. `idx` holds the three key prefixes from src/keys.rs (the
-- script's ARGV); the value is appended to its prefix (same tenant, same slot).

local function registry_prefixes(type_prefix, job_prefix, status_prefix)
  if type_prefix == '' or job_prefix == '' or status_prefix == '' then
    return nil
  end
  return {type = type_prefix, job = job_prefix, status = status_prefix}
end

-- Adds (or moves the score of) an instance in each index it belongs to.
local function registry_index(idx, instance, agent_id, job_id, status, score)
  redis.call('ZADD', idx.type .. agent_id, score, instance)
  if job_id and job_id ~= '' then redis.call('ZADD', idx.job .. job_id, score, instance) end
  redis.call('ZADD', idx.status .. status, score, instance)
end

-- Removes an instance from the indexes of the type, job and status it had.
local function registry_unindex(idx, instance, agent_id, job_id, status)
  if agent_id and agent_id ~= '' then redis.call('ZREM', idx.type .. agent_id, instance) end
  if job_id and job_id ~= '' then redis.call('ZREM', idx.job .. job_id, instance) end
  if status and status ~= '' then redis.call('ZREM', idx.status .. status, instance) end
end

-- Statuses an instance may be stored with.
local registry_statuses = {starting = true, running = true, idle = true, stopped = true, stale = true}
