-- End the pending write as written: the outbox hash, the indexes, the final result's record,
-- the counters and the timeline. A partial result written while another body waits
-- (``next_*``): that one becomes the pending body, for the same job to write next. With a
-- holder (ARGV[17]) the job's write slot is released in the same step, whatever the answer.
-- KEYS[1] outbox hash
-- KEYS[2] results hash
-- KEYS[3] stats hash
-- KEYS[4] pending zset
-- KEYS[5] written zset
-- KEYS[6] timeline list
-- KEYS[7] provisioned zset
-- KEYS[8] result-stats hash
-- KEYS[9] the integration's write lease zset (holder -> lease expiry)
-- KEYS[10] the hour's throughput hash (not type-checked: skipped when of another type)
-- ARGV[1] job id
-- ARGV[2] submission id
-- ARGV[3] now (unix time)
-- ARGV[4] warnings (JSON)
-- ARGV[5] lost answer ('1'/'0')
-- ARGV[6] outbox TTL (seconds)
-- ARGV[7] order id
-- ARGV[8] results record (JSON; '' for a partial result)
-- ARGV[9] order ref
-- ARGV[10] written-index cutoff (unix time)
-- ARGV[11] timeline TTL (seconds)
-- ARGV[12] timeline event (JSON)
-- ARGV[13] integration id
-- ARGV[14] latency (seconds, submit to written)
-- ARGV[15] read-back verdict ('' without a read-back)
-- ARGV[16] the result Kombo showed it holds (JSON; '' when none)
-- ARGV[17] the write slot's holder to release ('' to leave the leases alone)
-- ARGV[18..] latency histogram bucket fields to bump
-- Returns: 'written'; 'next' (another body is now pending); 'stale' when the job no longer
--   owns the write; 'superseded' when another body replaced it.
local KEY_TYPES = {'hash', 'hash', 'hash', 'zset', 'zset', 'list', 'zset', 'hash', 'zset'}
--#include type_guard
--#include outbox_promote
--#include timeline
--#include throughput
if ARGV[17] ~= '' then redis.call('ZREM', KEYS[9], ARGV[17]) end
local current = redis.call('HMGET', KEYS[1], 'state', 'job', 'submission')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
if current[3] ~= ARGV[2] then return 'superseded' end
redis.call('HINCRBY', KEYS[8], ARGV[13] .. '|written', 1)
redis.call('HINCRBYFLOAT', KEYS[8], ARGV[13] .. '|latency_sum', ARGV[14])
for i = 18, #ARGV do redis.call('HINCRBY', KEYS[8], ARGV[13] .. '|le|' .. ARGV[i], 1) end
timeline_append(KEYS[6], ARGV[12], ARGV[11])
if ARGV[8] == '' and promote() then return 'next' end
redis.call('HSET', KEYS[1], 'state', 'written', 'written_at', ARGV[3], 'warnings', ARGV[4],
  'lost_answer', ARGV[5])
redis.call('HDEL', KEYS[1], 'next_attempt_at', 'read_back', 'kombo_result', 'next_body',
  'next_submission', 'next_digest', 'next_status', 'next_submitted_at')
if ARGV[15] ~= '' then redis.call('HSET', KEYS[1], 'read_back', ARGV[15]) end
if ARGV[16] ~= '' then redis.call('HSET', KEYS[1], 'kombo_result', ARGV[16]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZREM', KEYS[4], ARGV[9])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[10])
if ARGV[8] ~= '' then
  if redis.call('HSET', KEYS[2], ARGV[7], ARGV[8]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'results_written', 1)
    count_throughput(KEYS[10], 'results', ARGV[3], 1)
  end
  redis.call('ZREM', KEYS[7], ARGV[9])
end
return 'written'
