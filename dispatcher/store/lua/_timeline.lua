-- Fragment timeline: timeline_append(key, event, ttl) adds one event (JSON) to an order's
-- timeline ({ns}:timeline:{integration}:{order}, read by dispatcher.store.timeline). The
-- list keeps the last 200 events only: a client submitting partial results in a loop must
-- not grow it without end.
-- KEYS none of its own (the timeline list is the function's first argument)
-- ARGV none of its own (event and TTL in seconds are its arguments)
-- Returns: nothing (a local function for the including script).
local function timeline_append(key, event, ttl)
  redis.call('RPUSH', key, event)
  redis.call('LTRIM', key, -200, -1)
  redis.call('EXPIRE', key, ttl)
end
