-- Hand the pending write to a new job: the current one ends, the new one runs at ARGV[3]
-- (queued at once when that is not later than now, else in RQ's scheduled registry).
-- KEYS[1] outbox hash
-- KEYS[2] scheduled registry zset (of the results queue)
-- KEYS[3] results queue list
-- KEYS[4] rq:queues set
-- KEYS[5] new job hash
-- ARGV[1] current job id
-- ARGV[2] new job id
-- ARGV[3] when (unix time)
-- ARGV[4] unused (attempts are counted when sent, by outbox_begin.lua)
-- ARGV[5] last error ('' to keep the one recorded)
-- ARGV[6] queue key (member of rq:queues)
-- ARGV[7] now (unix time)
-- ARGV[8..] new job hash field/value items
-- Returns: 'rescheduled'; 'stale' when the current job no longer owns the write.
local KEY_TYPES = {'hash', 'zset', 'list', 'set'}
--#include type_guard
local current = redis.call('HMGET', KEYS[1], 'state', 'job')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'next_attempt_at', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[5]) end
if redis.call('TYPE', KEYS[5])['ok'] ~= 'none' then redis.call('DEL', KEYS[5]) end
redis.call('HSET', KEYS[5], unpack(ARGV, 8, #ARGV))
if tonumber(ARGV[3]) <= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[5], 'status', 'queued')
  redis.call('RPUSH', KEYS[3], ARGV[2])
else
  redis.call('HSET', KEYS[5], 'status', 'scheduled')
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
end
redis.call('SADD', KEYS[4], ARGV[6])
return 'rescheduled'
