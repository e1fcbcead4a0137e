-- The last step of an order's handler chain completed: step_complete.lua and
-- mark_provisioned.lua in one script (one round trip where they took two), or (a key of
-- another type) nothing (dispatcher.worker.jobs.StepStore.complete with the chain's end).
-- KEYS[1] steps hash of the order
-- KEYS[2] step-stats hash
-- KEYS[3] provisioned zset
-- KEYS[4] results hash
-- KEYS[5] timeline list
-- ARGV[1] handler name
-- ARGV[2] step record (JSON)
-- ARGV[3] TTL (seconds; 0: none)
-- ARGV[4] step-stats field to bump
-- ARGV[5] now (unix time)
-- ARGV[6] order ref
-- ARGV[7] order id
-- ARGV[8] timeline event (JSON)
-- ARGV[9] timeline TTL (seconds)
-- Returns: 1.
local KEY_TYPES = {'hash', 'hash', 'zset', 'hash', 'list'}
--#include type_guard
--#include timeline
--#include step_record
--#include chain_done
step_record(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
chain_done(KEYS[3], KEYS[4], KEYS[5], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return 1
