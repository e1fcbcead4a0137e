-- Take the periodic reconcile pass's lease when the pass is due (no next_at yet: due at
-- once), in one step (dispatcher.store.reconcile_state); a lease already its own is kept.
-- KEYS[1] reconcile hash
-- KEYS[2] reconcile lease key
-- ARGV[1] now (unix time)
-- ARGV[2] owner
-- ARGV[3] lease TTL (milliseconds)
-- Returns: 1 when the lease is held; 0 when not due or held by another.
local due = redis.call('HGET', KEYS[1], 'next_at')
if due and tonumber(due) and tonumber(due) > tonumber(ARGV[1]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
return 0
