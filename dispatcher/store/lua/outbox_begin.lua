-- An attempt of the pending body is about to be sent: counted, and the body locked ('sent').
-- KEYS[1] outbox hash
-- ARGV[1] job id (the write job about to send)
-- ARGV[2] submission id (of the body it read)
-- Returns: 'begun'; 'stale' when the job no longer owns the write; 'changed' when another
--   body replaced the one it read.
local KEY_TYPES = {'hash'}
--#include type_guard
local current = redis.call('HMGET', KEYS[1], 'state', 'job', 'submission')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
if current[3] ~= ARGV[2] then return 'changed' end
redis.call('HSET', KEYS[1], 'sent', '1')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'begun'
