-- Extend a lease (a poller's on an integration, the reconcile pass's) only while its owner
-- holds it.
-- KEYS[1] lease key
-- ARGV[1] owner
-- ARGV[2] lease TTL (milliseconds)
-- Returns: 1 when renewed; 0 when the lease was lost (expired and taken, or released).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
