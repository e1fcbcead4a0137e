-- An order's handler chain finished: its timeline event, and the provisioned mark that
-- `status` reads for orders provisioned long ago without a final result (none when its final
-- result is already written: such an order is not stale).
-- KEYS[1] provisioned zset
-- KEYS[2] results hash
-- KEYS[3] timeline list
-- ARGV[1] now (unix time)
-- ARGV[2] order ref
-- ARGV[3] order id
-- ARGV[4] timeline event (JSON)
-- ARGV[5] timeline TTL (seconds)
-- Returns: 1.
local KEY_TYPES = {'zset', 'hash', 'list'}
--#include type_guard
--#include timeline
--#include chain_done
chain_done(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
