-- Mark a job first seen popped but not started (as RQ's set_first_seen: kept if set, for a
-- day), only while it is still in the intermediate list: a mark set after the job left it (a
-- worker started it meanwhile) would outlive this visit and make its next one, a retry, look
-- stranded at once.
-- KEYS[1] intermediate list
-- KEYS[2] first-seen mark
-- ARGV[1] job id
-- ARGV[2] now (unix time)
-- ARGV[3] list search mode ('lpos' or 'scan')
-- Returns: 1 marked; 0 not in the list, or already marked.
local KEY_TYPES = {'list', 'string'}
--#include type_guard
--#include rq_where
if not rq_in_list(KEYS[1], ARGV[1], ARGV[3]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', 86400) then return 1 end
return 0
