-- A job this worker just popped and leaves untouched (another namespace's): back to the end
-- of the queue, its first-seen mark dropped.
-- KEYS[1] intermediate list
-- KEYS[2] queue list
-- KEYS[3] first-seen mark
-- ARGV[1] job id
-- Returns: 1 put back; 0 no longer in the intermediate list.
local KEY_TYPES = {'list', 'list', 'string'}
--#include type_guard
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
