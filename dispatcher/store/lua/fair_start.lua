-- A worker took a job of a capped integration off the worker queue (dispatcher.store.fair):
-- it may start it if the job holds a lease (the feeder's, still unexpired: renewed) or one
-- is free; else the job goes back to the head of its integration's list, untouched, its
-- first-seen mark dropped, and the integration is parked until a lease frees.
-- KEYS[1] the integration's lease zset (job id -> lease expiry)
-- KEYS[2] intermediate list
-- KEYS[3] first-seen mark
-- KEYS[4] the integration's list
-- KEYS[5] parked set
-- KEYS[6] rq:queues set
-- ARGV[1] now (unix time)
-- ARGV[2] cap
-- ARGV[3] job id
-- ARGV[4] lease expiry (unix time)
-- ARGV[5] integration id
-- Returns: 1 start it; 0 put back; -1 no longer in the intermediate list (leave it).
local KEY_TYPES = {'zset', 'list', 'string', 'list', 'set', 'set'}
--#include type_guard
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZSCORE', KEYS[1], ARGV[3])
if held or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[1])) + 60)
  return 1
end
if redis.call('LREM', KEYS[2], 1, ARGV[3]) == 0 then return -1 end
redis.call('DEL', KEYS[3])
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('SADD', KEYS[6], KEYS[4])
redis.call('SADD', KEYS[5], ARGV[5])
return 0
