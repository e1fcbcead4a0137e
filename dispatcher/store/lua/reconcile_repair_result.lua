-- The reconciler's second look at one pending result, atomic, and its repair.
-- KEYS[1] results queue list
-- KEYS[2] rq:queues set
-- KEYS[3] outbox hash
-- KEYS[4] write job hash
-- KEYS[5] intermediate list
-- KEYS[6] executions zset
-- KEYS[7] started registry
-- KEYS[8] scheduled registry
-- KEYS[9] deferred registry
-- KEYS[10] failed registry
-- KEYS[11] canceled registry
-- KEYS[12] finished registry
-- ARGV[1] mode ('check' or 'repair')
-- ARGV[2] job id
-- ARGV[3] queue key (member of rq:queues)
-- ARGV[4..] the job-hash items of a queued write job (for a rebuild)
-- Returns: {outcome, where}: outcome 'gone' (the write ended or changed hands meanwhile),
--   'live', 'lost' (check mode), 'requeued' or 'rebuilt'.
local KEY_TYPES = {'list', 'set', 'hash'}
--#include type_guard
--#include rq_place
local current = redis.call('HMGET', KEYS[3], 'state', 'job')
if current[1] ~= 'pending' or current[2] ~= ARGV[2] then return {'gone', ''} end
local place, status = rq_place(KEYS[4], ARGV[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9], '', '')
if place and place ~= 'finished' then return {'live', place} end
if redis.call('LPOS', KEYS[1], ARGV[2]) then return {'live', 'queued'} end
if redis.call('LPOS', KEYS[5], ARGV[2]) then return {'live', 'intermediate'} end
local exists = redis.call('TYPE', KEYS[4])['ok'] == 'hash'
local where = 'no write job'
if exists then
  where = 'write job ' .. (status or 'without status') .. ', not queued, scheduled or running'
end
if ARGV[1] ~= 'repair' then return {'lost', where} end
local outcome = 'requeued'
if exists then
  redis.call('HSET', KEYS[4], 'status', 'queued')
  redis.call('PERSIST', KEYS[4])
else
  redis.call('HSET', KEYS[4], unpack(ARGV, 4, #ARGV))
  outcome = 'rebuilt'
end
for i = 10, 12 do redis.call('ZREM', KEYS[i], ARGV[2]) end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return {outcome, where}
