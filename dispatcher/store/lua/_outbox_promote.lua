-- Fragment outbox_promote: promote() makes the body waiting behind the one on its way (the
-- ``next_*`` fields, see dispatcher.store.results) the pending body, its attempts from 0.
-- KEYS[1] the outbox hash (the including script's first key)
-- ARGV none read
-- Returns: true when a body waited and is now pending; false when none waited.
local function promote()
  local n = redis.call('HMGET', KEYS[1], 'next_body', 'next_submission', 'next_digest',
    'next_status', 'next_submitted_at')
  if not n[2] then return false end
  redis.call('HSET', KEYS[1], 'body', n[1], 'submission', n[2], 'digest', n[3], 'status', n[4],
    'submitted_at', n[5], 'attempts', 0)
  redis.call('HDEL', KEYS[1], 'next_body', 'next_submission', 'next_digest', 'next_status',
    'next_submitted_at', 'sent', 'next_attempt_at', 'last_error')
  return true
end
