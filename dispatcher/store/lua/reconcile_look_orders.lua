-- The reconciler's first look at a batch of orders (dispatcher.store.reconcile): read-only
-- but for dropping the dispatch records of orders that are done when ARGV[1] is '1'.
-- KEYS[1] started registry
-- KEYS[2] scheduled registry
-- KEYS[3] deferred registry
-- KEYS[4] failed registry
-- KEYS[5] canceled registry
-- KEYS[6] provisioned zset
-- KEYS[7] results hash
-- KEYS[8..] per order: job hash, executions zset, steps hash, dispatch record
-- ARGV[1] drop the records of orders that are done ('1'/'0')
-- ARGV[2] h = number of handlers
-- ARGV[3..] h handler names, then per order: order id, job id, order ref
-- Returns: per order that is not plainly live or done: order id, 'queued' (a queued job: the
--   caller checks its queue copy) or 'lost', the job's status ('' when no job).
--#include rq_place
local h = tonumber(ARGV[2])
local out = {}
local k = 8
for a = 3 + h, #ARGV, 3 do
  local order_id, job_id, ref = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local done = redis.call('HEXISTS', KEYS[7], order_id) == 1
    or redis.call('ZSCORE', KEYS[6], ref)
  local place, status = false, false
  if not done then
    place, status = rq_place(KEYS[k], job_id, KEYS[k + 1], KEYS[1], KEYS[2], KEYS[3],
      KEYS[4], KEYS[5])
    if not place and all_steps(KEYS[k + 2], 3, h) then done = true end
  end
  if done or place == 'finished' or place == 'failed' or place == 'canceled' then
    if ARGV[1] == '1' then redis.call('DEL', KEYS[k + 3]) end
  elseif not place then
    out[#out + 1] = order_id
    out[#out + 1] = status == 'queued' and 'queued' or 'lost'
    out[#out + 1] = status or ''
  end
  k = k + 4
end
return out
