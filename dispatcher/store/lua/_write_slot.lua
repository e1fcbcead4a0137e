-- Fragment write_slot: take_write_slot(key, now, cap, holder, expiry) takes one of an
-- integration's Kombo write slots (dispatcher.store.leases.WriteLeases): expired leases are
-- dropped first; a holder renews its own lease whatever the count.
-- KEYS none of its own (the integration's lease zset, holder -> lease expiry, is the
--   function's first argument; the including script type-checks it)
-- ARGV none of its own (now and expiry are unix times, cap a number of slots)
-- Returns: true when the slot is held; false when every slot is taken.
local function take_write_slot(key, now, cap, holder, expiry)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZSCORE', key, holder) then
    redis.call('ZADD', key, expiry, holder)
    return true
  end
  if redis.call('ZCARD', key) >= tonumber(cap) then return false end
  redis.call('ZADD', key, expiry, holder)
  redis.call('PEXPIRE', key, math.ceil((tonumber(expiry) - tonumber(now)) * 1000) + 1000)
  return true
end
