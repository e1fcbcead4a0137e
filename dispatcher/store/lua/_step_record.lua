-- Fragment step_record: step_record(steps, stats, handler, record, ttl, field) records a
-- completed step of an order's handler chain with its TTL and counts it
-- (dispatcher.worker.jobs.StepStore).
-- KEYS none of its own (the steps hash and the step-stats hash are its first arguments)
-- ARGV none of its own (handler name, step record JSON, TTL in seconds (0: none) and the
--   step-stats field to bump are its other arguments)
-- Returns: nothing (a local function for the including script).
local function step_record(steps, stats, handler, record, ttl, field)
  redis.call('HSET', steps, handler, record)
  if tonumber(ttl) > 0 then redis.call('EXPIRE', steps, ttl) end
  redis.call('HINCRBY', stats, field, 1)
end
