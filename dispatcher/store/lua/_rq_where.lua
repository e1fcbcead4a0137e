-- Fragment rq_where: is a job where its status says it is? rq_in_place leaves it alone only
-- if it is finished, or failed and in the failed registry, or scheduled and in the scheduled
-- registry, or queued and in its queue (or its intermediate list: a worker popped it and
-- will start it, or requeue_stranded puts it back). Anything else (started, a status written
-- without its registry move, stopped, canceled, no status) is nowhere a worker will find it.
-- rq_in_list searches a list with LPOS (``mode`` 'lpos', Redis >= 6.0.6) or LRANGE pages of
-- 1,000 ('scan'); rq_put_back queues a job again.
-- KEYS none of their own (every key is an argument)
-- ARGV none of their own
-- Returns: booleans (rq_in_list, rq_in_place); nothing (rq_put_back).
local function rq_in_list(key, id, mode)
  if mode == 'lpos' then return redis.call('LPOS', key, id) ~= false end
  local n = redis.call('LLEN', key)
  local i = 0
  while i < n do
    for _, v in ipairs(redis.call('LRANGE', key, i, i + 999)) do
      if v == id then return true end
    end
    i = i + 1000
  end
  return false
end
local function rq_in_place(job_key, id, queue_key, intermediate_key, failed_key,
                           scheduled_key, mode)
  local status = redis.call('HGET', job_key, 'status')
  if status == 'finished' then return true end
  if status == 'failed' then return redis.call('ZSCORE', failed_key, id) ~= false end
  if status == 'scheduled' then return redis.call('ZSCORE', scheduled_key, id) ~= false end
  if status == 'queued' then
    return rq_in_list(queue_key, id, mode) or rq_in_list(intermediate_key, id, mode)
  end
  return false
end
local function rq_put_back(job_key, queue_key, id)
  redis.call('HSET', job_key, 'status', 'queued')
  redis.call('RPUSH', queue_key, id)
end
