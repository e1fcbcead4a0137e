-- A job of a worker succeeded (dispatcher.store.rq_jobs.finish): what RQ's handle_job_success
-- writes (the worker's counts, the job's status, its result, the finished registry, the TTLs,
-- the execution's removal), in one script where RQ sent a watched transaction of about
-- twenty commands, and nothing when the execution is no longer in the started registry (it
-- was put back on the queue meanwhile: its requeued copy runs and finishes the job).
-- KEYS[1] started registry of the job's queue
-- KEYS[2] job hash
-- KEYS[3] execution hash
-- KEYS[4] the job's executions zset
-- KEYS[5] the worker's executions set
-- KEYS[6] worker hash
-- KEYS[7] finished registry of the job's queue
-- KEYS[8] the job's results stream
-- KEYS[9] the job's dependents set
-- KEYS[10] the job's dependencies set
-- KEYS[11] steps hash of the order ('' when the success does not follow a step's record)
-- ARGV[1] job id
-- ARGV[2] execution id
-- ARGV[3] now (unix time, whole seconds)
-- ARGV[4] ended at (RQ's text form)
-- ARGV[5] the execution's working time (seconds)
-- ARGV[6] result TTL (seconds, > 0; -1: kept for ever)
-- ARGV[7] the step whose record the success follows in the same round trip ('' if none)
-- ARGV[8..] the result entry's fields and values (RQ's Result.serialize)
-- Returns: the number of the job's dependents, -1 when nothing was written because the
--   execution left the started registry, -2 because the step's record is not there (its
--   script refused to write it: the job fails instead).
local job_id, execution_id = ARGV[1], ARGV[2]
local composite = job_id .. ':' .. execution_id
if not redis.call('ZSCORE', KEYS[1], composite) then return -1 end
if ARGV[7] ~= '' then
  if redis.call('TYPE', KEYS[11])['ok'] ~= 'hash' then return -2 end
  if redis.call('HEXISTS', KEYS[11], ARGV[7]) == 0 then return -2 end
end
local ttl = tonumber(ARGV[6])
redis.call('HINCRBY', KEYS[6], 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', KEYS[6], 'total_working_time', ARGV[5])
redis.call('HSET', KEYS[2], 'status', 'finished', 'ended_at', ARGV[4])
local entry = {}
for i = 8, #ARGV do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[8], 'MAXLEN', '~', 10, '*', unpack(entry))
if ttl < 0 then
  redis.call('PERSIST', KEYS[8])
  redis.call('ZADD', KEYS[7], '+inf', job_id)
else
  redis.call('EXPIRE', KEYS[8], ttl)
  redis.call('ZADD', KEYS[7], tonumber(ARGV[3]) + ttl, job_id)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[9], ttl)
  redis.call('EXPIRE', KEYS[10], ttl)
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], composite)
redis.call('ZREM', KEYS[4], execution_id)
redis.call('SREM', KEYS[5], composite)
return redis.call('SCARD', KEYS[9])
