-- Top the worker queue up from the integrations' lists, in turn (dispatcher.store.fair): a
-- worker calls it after each job it takes, and its maintenance pass, which first unparks
-- the integrations whose leases have expired or whose cap was raised (ARGV[2] '1').
-- KEYS[1] worker queue list
-- KEYS[2] ring list
-- KEYS[3] parked set
-- KEYS[4] rq:queues set
-- ARGV[1] now (unix time)
-- ARGV[2] unpark first ('1'/'0')
-- ARGV[3..] the feed block (see _fair_feed.lua)
-- Returns: the number of jobs moved onto the worker queue.
local KEY_TYPES = {'list', 'list', 'set', 'set'}
--#include type_guard
--#include fair_feed
local now = tonumber(ARGV[1])
local cfg = fair_config(3)
if ARGV[2] == '1' then
  for _, integration in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if fair_under_cap(cfg, integration, now) then
      redis.call('SREM', KEYS[3], integration)
      redis.call('RPUSH', KEYS[2], integration)
    end
  end
end
return fair_feed(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, cfg)
