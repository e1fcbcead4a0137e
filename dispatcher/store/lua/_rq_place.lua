-- Fragment rq_place: the reconciler's look at a job. rq_place answers its place: started
-- (through its executions), scheduled, deferred, failed, canceled, finished; false when in
-- none of them (the lists are the caller's to search); and its status. all_steps tells
-- whether every handler of the chain (ARGV[first .. first + count - 1]) has a step record.
-- KEYS none of their own (every key is an argument)
-- ARGV[first..first + count - 1] handler names, at the position all_steps is given
-- Returns: place (or false) and status (rq_place); a boolean (all_steps).
local function rq_place(job, job_id, executions, wip, scheduled, deferred, failed, canceled)
  local status = redis.call('HGET', job, 'status')
  for _, execution in ipairs(redis.call('ZRANGE', executions, 0, -1)) do
    if redis.call('ZSCORE', wip, job_id .. ':' .. execution) then return 'started', status end
  end
  if redis.call('ZSCORE', scheduled, job_id) then return 'scheduled', status end
  if redis.call('ZSCORE', deferred, job_id) then return 'deferred', status end
  if redis.call('ZSCORE', failed, job_id) then return 'failed', status end
  if redis.call('ZSCORE', canceled, job_id) then return 'canceled', status end
  if status == 'finished' then return 'finished', status end
  return false, status
end
local function all_steps(steps, first, count)
  if count == 0 then return false end
  for i = first, first + count - 1 do
    if redis.call('HEXISTS', steps, ARGV[i]) == 0 then return false end
  end
  return true
end
