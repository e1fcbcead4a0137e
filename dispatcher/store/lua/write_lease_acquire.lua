-- Take one of an integration's Kombo write slots (dispatcher.store.leases.WriteLeases):
-- expired leases are dropped first; a holder renews its own lease whatever the count.
-- KEYS[1] the integration's lease zset (holder -> lease expiry)
-- ARGV[1] now (unix time)
-- ARGV[2] cap (slots)
-- ARGV[3] holder
-- ARGV[4] lease expiry (unix time)
-- Returns: 1 when the slot is held; 0 when every slot is taken.
local KEY_TYPES = {'zset'}
--#include type_guard
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[4]) - tonumber(ARGV[1])) * 1000) + 1000)
return 1
