-- A poller claims a due integration (dispatcher.poller.schedule): checks it is still due and
-- takes its lease in the same step; a lease already its own is taken again. SET NX fails
-- alike on a held lease and on a key of another type; only the first expires, so the second
-- would starve the integration without a word: it is refused as WRONGTYPE. A claimed
-- integration is due again when its lease would expire unrenewed: other pollers skip it
-- meanwhile (it no longer hides due, free ones from them) and wake when it could be theirs.
-- KEYS[1] schedule zset
-- KEYS[2] the integration's lease key
-- ARGV[1] integration id
-- ARGV[2] now (unix time)
-- ARGV[3] owner
-- ARGV[4] lease TTL (milliseconds)
-- ARGV[5] now plus the lease TTL (unix time): the due time while leased
-- Returns: 1 when the lease is taken; 0 when not due or held by another; a WRONGTYPE error.
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[5], ARGV[1])
  return 1
end
if redis.call('TYPE', KEYS[2])['ok'] ~= 'string' then
  return redis.error_reply('WRONGTYPE the lease key holds the wrong kind of value')
end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[1], 'XX', ARGV[5], ARGV[1])
  return 1
end
return 0
