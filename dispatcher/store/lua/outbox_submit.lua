-- Store an order's result in its outbox hash and queue its write job, in one step (or refuse
-- it: see dispatcher.store.results, Outbox.submit).
-- KEYS[1] outbox hash
-- KEYS[2] results hash (the integration's written final results)
-- KEYS[3] pending zset
-- KEYS[4] failed zset
-- KEYS[5] written zset
-- KEYS[6] results queue list
-- KEYS[7] rq:queues set
-- KEYS[8] timeline list
-- KEYS[9] seen hash (the ledger's)
-- KEYS[10] write job hash
-- ARGV[1] order id
-- ARGV[2] digest of the body
-- ARGV[3] body (JSON)
-- ARGV[4] status
-- ARGV[5] now (unix time)
-- ARGV[6] submission id
-- ARGV[7] integration id
-- ARGV[8] order ref
-- ARGV[9] queue key (member of rq:queues)
-- ARGV[10] write job id
-- ARGV[11] timeline TTL (seconds)
-- ARGV[12] timeline event (JSON)
-- ARGV[13] require the order dispatched ('1'/'0')
-- ARGV[14..] write job hash field/value items
-- Returns: {'queued' or 'replaced', submission id, submitted at, state}; {'duplicate',
--   submission id, submitted at, state}; {'final', status}; {'busy', status} (a final body
--   is on its way); {'unknown'} or {'rejected'} (with ARGV[13] '1').
local KEY_TYPES = {'hash', 'hash', 'zset', 'zset', 'zset', 'list', 'set', 'list', 'hash'}
--#include type_guard
--#include timeline
if ARGV[13] == '1' then
  local seen = redis.call('HGET', KEYS[9], ARGV[1])
  if not seen then return {'unknown'} end
  if string.sub(seen, 1, 9) == 'rejected:' then return {'rejected'} end
end
local record = redis.call('HGET', KEYS[2], ARGV[1])
if record then
  local ok, decoded = pcall(cjson.decode, record)
  if ok and type(decoded) == 'table' and (decoded['status'] == 'COMPLETED'
      or decoded['status'] == 'CANCELLED') then
    if decoded['digest'] == ARGV[2] then
      return {'duplicate', tostring(decoded['submission']), tostring(decoded['submitted_at']),
        'written'}
    end
    return {'final', decoded['status']}
  end
end
local current = redis.call('HMGET', KEYS[1], 'state', 'digest', 'submission', 'submitted_at',
  'sent', 'status', 'next_digest', 'next_submission', 'next_submitted_at')
local state, digest = current[1], current[2]
if (state == 'pending' or state == 'written') and digest == ARGV[2] then
  return {'duplicate', current[3], current[4], state}
end
if state == 'pending' and current[7] == ARGV[2] then
  return {'duplicate', current[8], current[9], state}
end
if state == 'pending' and current[5] == '1' then
  -- An attempt of the pending body was sent: Kombo may hold it. A final one takes no other;
  -- after a partial one, this body waits its turn (the same job writes it next).
  if current[6] == 'COMPLETED' or current[6] == 'CANCELLED' then
    return {'busy', current[6]}
  end
  redis.call('HSET', KEYS[1], 'next_body', ARGV[3], 'next_submission', ARGV[6],
    'next_digest', ARGV[2], 'next_status', ARGV[4], 'next_submitted_at', ARGV[5])
  timeline_append(KEYS[8], ARGV[12], ARGV[11])
  return {current[8] and 'replaced' or 'queued', ARGV[6], ARGV[5], 'pending'}
end
redis.call('HSET', KEYS[1], 'integration', ARGV[7], 'order', ARGV[1], 'digest', ARGV[2],
  'body', ARGV[3], 'status', ARGV[4], 'submission', ARGV[6], 'submitted_at', ARGV[5])
if state == 'pending' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
  timeline_append(KEYS[8], ARGV[12], ARGV[11])
  return {'replaced', ARGV[6], ARGV[5], 'pending'}
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'job', ARGV[10], 'attempts', 0)
redis.call('HDEL', KEYS[1], 'next_attempt_at', 'last_error', 'written_at', 'warnings',
  'lost_answer', 'reason', 'failed_at', 'sent', 'read_back', 'kombo_result', 'next_body',
  'next_submission', 'next_digest', 'next_status', 'next_submitted_at')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
redis.call('ZREM', KEYS[4], ARGV[8])
redis.call('ZREM', KEYS[5], ARGV[8])
if redis.call('TYPE', KEYS[10])['ok'] ~= 'none' then redis.call('DEL', KEYS[10]) end
redis.call('HSET', KEYS[10], unpack(ARGV, 14, #ARGV))
redis.call('RPUSH', KEYS[6], ARGV[10])
redis.call('SADD', KEYS[7], ARGV[9])
timeline_append(KEYS[8], ARGV[12], ARGV[11])
return {'queued', ARGV[6], ARGV[5], 'pending'}
