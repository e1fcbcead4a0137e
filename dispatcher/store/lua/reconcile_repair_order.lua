-- The reconciler's second look at one order, atomic, and its repair.
-- KEYS[1] queue list
-- KEYS[2] rq:queues set
-- KEYS[3] seen hash
-- KEYS[4] job hash
-- KEYS[5] intermediate list
-- KEYS[6] executions zset
-- KEYS[7] started registry
-- KEYS[8] scheduled registry
-- KEYS[9] deferred registry
-- KEYS[10] failed registry
-- KEYS[11] canceled registry
-- KEYS[12] provisioned zset
-- KEYS[13] results hash
-- KEYS[14] steps hash
-- KEYS[15] dispatch record
-- KEYS[16] the integration's list (its orders waiting for their turn; dispatcher.store.fair)
-- ARGV[1] mode ('check' or 'repair')
-- ARGV[2] job id
-- ARGV[3] order id
-- ARGV[4] order ref
-- ARGV[5] queue key (member of rq:queues)
-- ARGV[6] h = number of handlers
-- ARGV[7..] h handler names, then the shared job-hash items (for a rebuild)
-- Returns: {outcome, where}: outcome 'gone' (forgotten or rejected meanwhile), 'done',
--   'live', 'lost' (check mode), 'requeued' (its job hash re-queued), 'rebuilt' (from the
--   dispatch record), 'unmarked' (nothing to rebuild from: the seen mark removed, the next
--   sweep dispatches the order again if it is still OPEN).
local KEY_TYPES = {'list', 'set', 'hash'}
--#include type_guard
--#include rq_place
local seen = redis.call('HGET', KEYS[3], ARGV[3])
if not seen or string.sub(seen, 1, 9) == 'rejected:' then return {'gone', ''} end
if redis.call('HEXISTS', KEYS[13], ARGV[3]) == 1 then return {'done', 'result written'} end
if redis.call('ZSCORE', KEYS[12], ARGV[4]) then return {'done', 'provisioned'} end
local place, status = rq_place(KEYS[4], ARGV[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11])
if place then return {'live', place} end
if redis.call('LPOS', KEYS[1], ARGV[2]) then return {'live', 'queued'} end
if redis.call('LPOS', KEYS[5], ARGV[2]) then return {'live', 'intermediate'} end
if redis.call('TYPE', KEYS[16])['ok'] == 'list' and redis.call('LPOS', KEYS[16], ARGV[2]) then
  return {'live', 'waiting its turn'}
end
local h = tonumber(ARGV[6])
if all_steps(KEYS[14], 7, h) then return {'done', 'steps recorded'} end
local exists = redis.call('TYPE', KEYS[4])['ok'] == 'hash'
local where = 'no job'
if exists then where = 'job ' .. (status or 'without status') .. ', in no queue or registry' end
if ARGV[1] ~= 'repair' then return {'lost', where} end
local outcome
if exists then
  redis.call('HSET', KEYS[4], 'status', 'queued')
  redis.call('PERSIST', KEYS[4])
  outcome = 'requeued'
elseif redis.call('TYPE', KEYS[15])['ok'] == 'hash' then
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], unpack(ARGV, 7 + h, #ARGV))
  redis.call('HSET', KEYS[4], unpack(redis.call('HGETALL', KEYS[15])))
  outcome = 'rebuilt'
else
  redis.call('HDEL', KEYS[3], ARGV[3])
  return {'unmarked', where}
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
return {outcome, where}
