-- A worker starts a job (dispatcher.store.rq_jobs.start): what RQ's prepare_execution and
-- prepare_job_execution write, in one script where they took a transaction of a dozen
-- commands, and the first read of the order's step records (step_begin.lua) in the same
-- round trip. The job goes from RQ's intermediate list to the started registry at once.
-- KEYS[1] job hash
-- KEYS[2] execution hash
-- KEYS[3] the job's executions zset
-- KEYS[4] started registry of the job's queue
-- KEYS[5] the worker's executions set
-- KEYS[6] intermediate list of the job's queue
-- KEYS[7] first-seen mark of the job
-- KEYS[8] steps hash of the order ('' when the job is not an order's)
-- ARGV[1] job id
-- ARGV[2] execution id
-- ARGV[3] now (unix time, float)
-- ARGV[4] now (RQ's text form)
-- ARGV[5] heartbeat TTL (seconds)
-- ARGV[6] worker name
-- ARGV[7] '1' to take the job out of the intermediate list, else '0'
-- ARGV[8] the steps hash's field counting attempts
-- ARGV[9] the steps hash's TTL (seconds; 0: none)
-- Returns: the steps hash after the attempt is counted, as a flat list of fields and values;
--   false when there is no steps hash to read or it holds another type (the job function
--   then reads it itself, and reports that).
local job_id, execution_id = ARGV[1], ARGV[2]
local composite = job_id .. ':' .. execution_id
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[5])
redis.call('HSET', KEYS[2], 'id', execution_id, 'job_id', job_id, 'created_at', ARGV[3],
  'last_heartbeat', ARGV[3], 'worker_name', ARGV[6])
redis.call('EXPIRE', KEYS[2], ttl)
-- RQ's scores: whole seconds (rq.utils.current_timestamp) plus the TTL.
local deadline = math.floor(now) + ttl
redis.call('ZADD', KEYS[3], deadline + 60, execution_id)
redis.call('EXPIRE', KEYS[3], ttl + 60)
redis.call('ZADD', KEYS[4], deadline, composite)
if ARGV[6] ~= '' then
  redis.call('SADD', KEYS[5], composite)
  redis.call('EXPIRE', KEYS[5], ttl + 60)
end
redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[4], 'status', 'started', 'started_at', ARGV[4],
  'worker_name', ARGV[6])
redis.call('PERSIST', KEYS[1])
if ARGV[7] == '1' then redis.call('LREM', KEYS[6], 1, job_id) end
redis.call('DEL', KEYS[7])
if KEYS[8] == '' then return false end
local found = redis.call('TYPE', KEYS[8])['ok']
if found ~= 'none' and found ~= 'hash' then return false end
redis.call('HINCRBY', KEYS[8], ARGV[8], 1)
if tonumber(ARGV[9]) > 0 then redis.call('EXPIRE', KEYS[8], ARGV[9]) end
return redis.call('HGETALL', KEYS[8])
