-- The reconciler's first look at a batch of pending results. Job keys are built from the
-- outbox's 'job' field inside the script (the owner changes with every reschedule; reading
-- it first from Python would race with that).
-- KEYS[1] started registry (of the results queue)
-- KEYS[2] scheduled registry
-- KEYS[3] deferred registry
-- KEYS[4..] per result: its outbox hash
-- ARGV[1] job key prefix (a job's key is the prefix and its id)
-- ARGV[2] executions key prefix
-- ARGV[3..] per result: its order ref (ARGV[i - 1] for KEYS[i])
-- Returns: per result not plainly live: order ref, job id, 'queued' or 'lost', the job's
--   status ('' when no job).
--#include rq_place
local out = {}
for i = 4, #KEYS do
  local current = redis.call('HMGET', KEYS[i], 'state', 'job')
  if current[1] == 'pending' and current[2] then
    local job_id = current[2]
    local place, status = rq_place(ARGV[1] .. job_id, job_id, ARGV[2] .. job_id, KEYS[1],
      KEYS[2], KEYS[3], '', '')
    if not place or place == 'finished' then
      out[#out + 1] = ARGV[i - 1]
      out[#out + 1] = job_id
      out[#out + 1] = status == 'queued' and place ~= 'finished' and 'queued' or 'lost'
      out[#out + 1] = status or ''
    end
  end
end
return out
