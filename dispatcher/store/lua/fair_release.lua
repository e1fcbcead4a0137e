-- A job of a capped integration is over (done, failed, or waiting for its retry): its lease
-- is released, the integration unparked if that freed it, and the worker queue topped up.
-- KEYS[1] worker queue list
-- KEYS[2] ring list
-- KEYS[3] parked set
-- KEYS[4] rq:queues set
-- KEYS[5] the integration's lease zset
-- ARGV[1] now (unix time)
-- ARGV[2] job id
-- ARGV[3] integration id
-- ARGV[4..] the feed block (see _fair_feed.lua)
-- Returns: the number of jobs moved onto the worker queue.
local KEY_TYPES = {'list', 'list', 'set', 'set', 'zset'}
--#include type_guard
--#include fair_feed
local now = tonumber(ARGV[1])
local cfg = fair_config(4)
redis.call('ZREM', KEYS[5], ARGV[2])
if redis.call('SISMEMBER', KEYS[3], ARGV[3]) == 1 and fair_under_cap(cfg, ARGV[3], now) then
  redis.call('SREM', KEYS[3], ARGV[3])
  redis.call('RPUSH', KEYS[2], ARGV[3])
end
return fair_feed(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, cfg)
