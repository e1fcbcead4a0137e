-- Count an attempt of an order's handler chain and read the steps it completed, or (a key of
-- another type) nothing (dispatcher.worker.jobs.StepStore.begin): one command where a
-- transaction took five.
-- KEYS[1] steps hash of the order
-- ARGV[1] the hash's field counting attempts
-- ARGV[2] TTL (seconds; 0: none)
-- Returns: the hash after the count, as a flat list of fields and values.
local KEY_TYPES = {'hash'}
--#include type_guard
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('HGETALL', KEYS[1])
