-- A write job is about to send the pending body: in one step, check that it still owns the
-- write, take one of the integration's write slots (the fragment write_slot, as
-- write_lease_acquire does) and count the attempt and lock the body ('sent', as
-- outbox_begin does). Nothing changes unless all three hold.
-- KEYS[1] outbox hash
-- KEYS[2] the integration's lease zset (holder -> lease expiry)
-- ARGV[1] job id (the write job about to send; the slot's holder)
-- ARGV[2] submission id (of the body it read)
-- ARGV[3] now (unix time)
-- ARGV[4] cap (slots)
-- ARGV[5] lease expiry (unix time)
-- Returns: 'begun' (the slot is held: release it); 'full' when every slot is taken; 'stale'
--   when the job no longer owns the write; 'changed' when another body replaced the one it
--   read.
local KEY_TYPES = {'hash', 'zset'}
--#include type_guard
--#include write_slot
local current = redis.call('HMGET', KEYS[1], 'state', 'job', 'submission')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
if current[3] ~= ARGV[2] then return 'changed' end
if not take_write_slot(KEYS[2], ARGV[3], ARGV[4], ARGV[1], ARGV[5]) then return 'full' end
redis.call('HSET', KEYS[1], 'sent', '1')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'begun'
