-- Take up to n jobs off the worker queue at once (dispatcher.store.fair.FairFeed.take): each
-- moved to RQ's intermediate list as RQ's own pop moves it (LMOVE), with its job hash read in
-- the same step, then the queue topped up from the integrations' lists. A threaded worker
-- with n idle threads spends one round trip where one pop, one fetch and one feed per job
-- spent three each.
-- KEYS[1] worker queue list
-- KEYS[2] intermediate list
-- KEYS[3] ring list
-- KEYS[4] parked set
-- KEYS[5] rq:queues set
-- ARGV[1] now (unix time)
-- ARGV[2] n (jobs to take at most)
-- ARGV[3] job key prefix ('rq:job:')
-- ARGV[4..] the feed block (see _fair_feed.lua)
-- Returns: per job taken, its id and its job hash as a flat field/value list (empty when the
--   hash is gone: RQ skips such an id, and the stranded-job pass drops it).
local KEY_TYPES = {'list', 'list', 'list', 'set', 'set'}
--#include type_guard
--#include fair_feed
local out = {}
for _ = 1, tonumber(ARGV[2]) do
  local job_id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not job_id then break end
  out[#out + 1] = job_id
  local job_key = ARGV[3] .. job_id
  if redis.call('TYPE', job_key)['ok'] == 'hash' then
    out[#out + 1] = redis.call('HGETALL', job_key)
  else
    out[#out + 1] = {}
  end
end
fair_feed(KEYS[1], KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[1]), fair_config(4))
return out
