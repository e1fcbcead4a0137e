-- Fragment rq_enqueue: local functions that write a job as RQ's Queue.enqueue does (Job.save,
-- and the queue registered in rq:queues; the push is the fair feeder's, _fair_feed.lua); what they mirror is
-- checked against RQ by tests/store/test_rq_internals.py. A job's fields come in ARGV as
-- field/value items: ``shared_n`` items from ARGV[shared_at] common to every job of the
-- call, then its own ``own_n`` items from ARGV[own_at].
-- KEYS none of their own (job hash, queue list, rq:queues set are arguments)
-- ARGV the items at the positions passed as arguments
-- Returns: nothing (local functions for the including script).
local function rq_save_job(job_key, shared_at, shared_n, own_at, own_n)
  -- A job hash left from an earlier dispatch of a forgotten order must not leak fields.
  redis.call('DEL', job_key)
  if shared_n > 0 then
    redis.call('HSET', job_key, unpack(ARGV, shared_at, shared_at + shared_n - 1))
  end
  redis.call('HSET', job_key, unpack(ARGV, own_at, own_at + own_n - 1))
end
local function rq_register_queue(queues_key, queue_key)
  redis.call('SADD', queues_key, queue_key)
end
