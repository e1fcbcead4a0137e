-- Fragment chain_done: chain_done(provisioned, results, timeline, now, ref, order_id, event,
-- ttl) records that an order's handler chain finished: its timeline event (with
-- timeline_append: the including script includes the timeline fragment first) and the
-- provisioned mark that `status` reads for orders provisioned long ago without a final result
-- (none when its final result is already written: such an order is not stale).
-- KEYS none of its own (the provisioned zset, results hash and timeline list are arguments)
-- ARGV none of its own (now, order ref, order id, the event JSON and the timeline TTL in
--   seconds are its other arguments)
-- Returns: nothing (a local function for the including script).
local function chain_done(provisioned, results, timeline, now, ref, order_id, event, ttl)
  if redis.call('HEXISTS', results, order_id) == 0 then
    redis.call('ZADD', provisioned, 'NX', now, ref)
  end
  timeline_append(timeline, event, ttl)
end
