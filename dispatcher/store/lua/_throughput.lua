-- Fragment throughput: count_throughput(key, kind, now, amount) adds ``amount`` to the
-- console's per-minute counter ``kind`` (dispatcher.store.throughput): ``key`` is the hour's
-- hash, ``now`` the unix time the key was chosen with. The hash expires 25 hours after its
-- hour began (throughput.expire_at, _KEEP_HOURS). Skipped when the key holds another type:
-- the chart is not worth refusing a dispatch or a result for.
-- KEYS none of its own (the hour's hash is the function's first argument)
-- ARGV none of its own
-- Returns: nothing (a local function for the including script).
local function count_throughput(key, kind, now, amount)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' or found == 'hash' then
    local at = tonumber(now)
    redis.call('HINCRBY', key, kind .. ':' .. math.floor(at / 60), amount)
    redis.call('EXPIREAT', key, (math.floor(at / 3600) + 25) * 3600)
  end
end
