-- A started-registry entry whose worker stopped heartbeating (dispatcher.worker.recovery):
-- whoever removes the entry decides, at most one worker does, and the job is never out of
-- both the registry and the place it belongs: it is put back on the queue unless it is
-- where its status says (rq_in_place), whatever that status is, or has no job hash. Types
-- are checked first: a WRONGTYPE after the ZREM would lose the job.
-- KEYS[1] started registry
-- KEYS[2] job hash
-- KEYS[3] queue list
-- KEYS[4] intermediate list
-- KEYS[5] failed registry
-- KEYS[6] scheduled registry
-- KEYS[7] first-seen mark
-- ARGV[1] registry entry
-- ARGV[2] job id
-- ARGV[3] list search mode ('lpos' or 'scan', rq_internals.list_search_mode)
-- Returns: 0 the entry was already gone (another worker took it), 1 put back, 2 it was where
--   its status says, 3 no job hash (rq_internals GONE, REQUEUED, IN_PLACE, NO_JOB).
local KEY_TYPES = {'zset', 'hash', 'list', 'list', 'zset', 'zset', 'string'}
--#include type_guard
--#include rq_where
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 3 end
if rq_in_place(KEYS[2], ARGV[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[3]) then return 2 end
redis.call('DEL', KEYS[7])
rq_put_back(KEYS[2], KEYS[3], ARGV[2])
return 1
