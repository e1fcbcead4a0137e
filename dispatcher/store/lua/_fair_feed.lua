-- Fragment fair_feed: the fair feeder (dispatcher.store.fair). Orders wait in one list per
-- integration; the ring lists, in turn order, the integrations that have orders waiting and
-- are under their in-flight cap. fair_feed tops the worker queue up to `window` jobs, one job
-- per integration in ring order, each move one LPOP/RPUSH inside the calling script (a job is
-- never in no list). An integration at its cap (its lease zset full) leaves the ring for the
-- parked set; fair_unpark puts it back. Each turn moves a job or takes an integration out of
-- the ring, so a call does O(window + integrations parked by it) work, whatever the number of
-- integrations. The per-integration keys are built from prefixes (the ring names them).
-- KEYS none of their own (every key is an argument)
-- ARGV the feed block from ARGV[at] (fair_config): window, fair-list key prefix, lease key
--   prefix, default cap (0: none), queued lease TTL (seconds), n, n integration/cap pairs
-- Returns: fair_config: the config table and the index after the block; fair_feed: the
--   number of jobs moved; fair_cap: an integration's cap (0: none); fair_under_cap: boolean.
local function fair_config(at)
  local cfg = {
    window = tonumber(ARGV[at]), list_prefix = ARGV[at + 1], lease_prefix = ARGV[at + 2],
    default_cap = tonumber(ARGV[at + 3]), queued_ttl = tonumber(ARGV[at + 4]), caps = {},
  }
  local n = tonumber(ARGV[at + 5])
  for i = at + 6, at + 5 + 2 * n, 2 do cfg.caps[ARGV[i]] = tonumber(ARGV[i + 1]) end
  return cfg, at + 6 + 2 * n
end
local function fair_cap(cfg, integration)
  return cfg.caps[integration] or cfg.default_cap
end
local function fair_under_cap(cfg, integration, now)
  local cap = fair_cap(cfg, integration)
  if cap <= 0 then return true end
  local leases = cfg.lease_prefix .. integration
  if redis.call('TYPE', leases)['ok'] ~= 'zset' then
    redis.call('DEL', leases)  -- absent, or of another type: nothing it holds is a lease
    return true
  end
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  return redis.call('ZCARD', leases) < cap
end
local function fair_feed(queue, ring, parked, queues, now, cfg)
  local moved = 0
  local want = cfg.window - redis.call('LLEN', queue)
  while moved < want do
    local integration = redis.call('LPOP', ring)
    if not integration then break end
    local list = cfg.list_prefix .. integration
    if redis.call('TYPE', list)['ok'] ~= 'list' then
      redis.call('SREM', queues, list)  -- empty (or not a list): out of the ring until a push
    elseif not fair_under_cap(cfg, integration, now) then
      redis.call('SADD', parked, integration)
    else
      local job_id = redis.call('LPOP', list)
      redis.call('RPUSH', queue, job_id)
      moved = moved + 1
      if fair_cap(cfg, integration) > 0 then
        local leases = cfg.lease_prefix .. integration
        redis.call('ZADD', leases, now + cfg.queued_ttl, job_id)
        redis.call('EXPIRE', leases, cfg.queued_ttl + 60)
      end
      if redis.call('LLEN', list) > 0 then
        redis.call('RPUSH', ring, integration)
      else
        redis.call('SREM', queues, list)
      end
    end
  end
  return moved
end
-- An integration's list got a job: in the ring unless it is there already (its list held
-- jobs) or parked; its list registered in rq:queues (what `rq info` lists).
local function fair_push(list, ring, parked, queues, integration, job_id)
  if redis.call('RPUSH', list, job_id) == 1 and redis.call('SISMEMBER', parked, integration) == 0 then
    redis.call('RPUSH', ring, integration)
  end
  redis.call('SADD', queues, list)
end
