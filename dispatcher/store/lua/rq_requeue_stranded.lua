-- A job a worker popped (RQ moves it to the intermediate list first) but never started:
-- taken off the list and put back on the queue unless it is already where its status says
-- or has no job hash, at most once; its first-seen mark goes with it (the next time it is
-- popped is a new sighting).
-- KEYS[1] intermediate list
-- KEYS[2] queue list
-- KEYS[3] job hash
-- KEYS[4] failed registry
-- KEYS[5] scheduled registry
-- KEYS[6] first-seen mark
-- ARGV[1] job id
-- ARGV[2] list search mode ('lpos' or 'scan')
-- Returns: 0 gone from the list already, 1 put back, 2 in place, 3 no job hash.
local KEY_TYPES = {'list', 'list', 'hash', 'zset', 'zset', 'string'}
--#include type_guard
--#include rq_where
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[6])
if redis.call('EXISTS', KEYS[3]) == 0 then return 3 end
if rq_in_place(KEYS[3], ARGV[1], KEYS[2], KEYS[1], KEYS[4], KEYS[5], ARGV[2]) then return 2 end
rq_put_back(KEYS[3], KEYS[2], ARGV[1])
return 1
