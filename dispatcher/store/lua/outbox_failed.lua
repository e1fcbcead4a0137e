-- End the pending write as failed (permanently); a body that waited behind it (``next_*``)
-- becomes the pending one instead.
-- KEYS[1] outbox hash
-- KEYS[2] pending zset
-- KEYS[3] failed zset
-- KEYS[4] timeline list
-- KEYS[5] result-stats hash
-- ARGV[1] job id
-- ARGV[2] now (unix time)
-- ARGV[3] reason
-- ARGV[4] outbox TTL (seconds)
-- ARGV[5] order ref
-- ARGV[6] timeline TTL (seconds)
-- ARGV[7] timeline event (JSON)
-- ARGV[8] integration id
-- Returns: 'failed'; 'next' (another body is now pending); 'stale' when the job no longer
--   owns the write.
local KEY_TYPES = {'hash', 'zset', 'zset', 'list', 'hash'}
--#include type_guard
--#include outbox_promote
--#include timeline
local current = redis.call('HMGET', KEYS[1], 'state', 'job')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
redis.call('HINCRBY', KEYS[5], ARGV[8] .. '|failed', 1)
timeline_append(KEYS[4], ARGV[7], ARGV[6])
if promote() then return 'next' end
redis.call('HSET', KEYS[1], 'state', 'failed', 'failed_at', ARGV[2], 'reason', ARGV[3])
redis.call('HDEL', KEYS[1], 'next_attempt_at')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
return 'failed'
