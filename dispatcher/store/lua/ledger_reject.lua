-- Remember an order as rejected, only if it is not seen yet: its seen mark
-- ('rejected:<unix time>') and its reason, together (types checked first, as in
-- ledger_dispatch.lua: never marked rejected without its reason).
-- KEYS[1] seen hash
-- KEYS[2] rejected hash
-- KEYS[3] seen-integrations set
-- KEYS[4] stats hash
-- ARGV[1] order id
-- ARGV[2] seen value
-- ARGV[3] rejection record (JSON)
-- ARGV[4] integration id
-- Returns: 1 when this call rejected the order; 0 when it was already seen (nothing written).
local KEY_TYPES = {'hash', 'hash', 'set', 'hash'}
--#include type_guard
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[4], 'orders_rejected', 1)
return 1
