-- A poller extends its lease on the integration it sweeps (dispatcher.poller.schedule), and
-- the integration's due time with it (see schedule_claim.lua), only while it holds the lease.
-- KEYS[1] schedule zset
-- KEYS[2] the integration's lease key
-- ARGV[1] integration id
-- ARGV[2] owner
-- ARGV[3] lease TTL (milliseconds)
-- ARGV[4] now plus the lease TTL (unix time)
-- Returns: 1 when renewed; 0 when the lease was lost (expired and taken, or released).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], 'XX', ARGV[4], ARGV[1])
return 1
