-- Record a completed step of an order's handler chain with its TTL and count it, or (a key
-- of another type) nothing (dispatcher.worker.jobs.StepStore.complete).
-- KEYS[1] steps hash of the order
-- KEYS[2] step-stats hash
-- ARGV[1] handler name
-- ARGV[2] step record (JSON)
-- ARGV[3] TTL (seconds; 0: none)
-- ARGV[4] step-stats field to bump
-- Returns: 1.
local KEY_TYPES = {'hash', 'hash'}
--#include type_guard
--#include step_record
step_record(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
