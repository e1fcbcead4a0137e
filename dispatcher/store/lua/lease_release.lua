-- Release a lease (a poller's on an integration, the reconcile pass's) only while its owner
-- holds it.
-- KEYS[1] lease key
-- ARGV[1] owner
-- Returns: 1 when released; 0 when another owner holds it or it is gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
