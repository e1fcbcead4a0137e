-- Dedupe and enqueue a page of orders in one step (dispatcher.store.ledger): each order not
-- seen yet is marked seen (HSETNX is the arbiter between concurrent dispatchers), its RQ job
-- written and pushed on its integration's list (the fair feeder, _fair_feed.lua, moves it to
-- the worker queue in turn with other integrations' orders), and its dispatch record kept (the job's own items: data, description,
-- meta, for the reconciler to rebuild the job from if the job hash is lost while the seen
-- mark stays; it expires with the reconciler's window). Orders already seen OPEN get their
-- mark renewed to this sweep's generation. Seen values are '<first seen unix time>' or
-- '<first seen unix time>:<generation of the last full sweep that saw the order OPEN>'.
-- KEYS[1] seen hash
-- KEYS[2] queue list
-- KEYS[3] rq:queues set
-- KEYS[4] seen-integrations set
-- KEYS[5] stats hash
-- KEYS[6] the integration's list (its orders waiting for their turn)
-- KEYS[7] ring list (integrations with orders waiting, in turn order)
-- KEYS[8] parked set (integrations at their in-flight cap)
-- KEYS[9] the hour's throughput hash (not type-checked: skipped when of another type)
-- KEYS[10..] j job hashes (one per candidate; a key of another type is deleted, as a stale
--   job hash is), then j dispatch records (Keys.dispatched, in the same order)
-- ARGV[1] now (unix time)
-- ARGV[2] integration id
-- ARGV[3] queue key (member of rq:queues)
-- ARGV[4] generation suffix of new values ('' or ':<generation>')
-- ARGV[5] TTL of the dispatch records (seconds; 0: none written)
-- ARGV[6] m = number of seen orders to mark
-- ARGV[7..] m order ids, then c = number of job-hash items every job of the page shares,
--   c field/value items, then per candidate: order id, job id, n, n field/value items, then
--   the feed block (see _fair_feed.lua)
-- Returns: the ids of the orders enqueued by this call.
local KEY_TYPES = {'hash', 'list', 'set', 'set', 'hash', 'list', 'list', 'set'}
--#include type_guard
--#include rq_enqueue
--#include throughput
--#include fair_feed
local m = tonumber(ARGV[6])
for i = 7, 6 + m do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    local first_seen = string.match(value, '^(%d+)')
    if first_seen then redis.call('HSET', KEYS[1], ARGV[i], first_seen .. ARGV[4]) end
  end
end
local c = tonumber(ARGV[7 + m])
local shared = 8 + m
local pos = shared + c
local new = {}
local jobs = (#KEYS - 9) / 2
local record_ttl = tonumber(ARGV[5])
for i = 10, 9 + jobs do
  local order_id = ARGV[pos]
  local job_id = ARGV[pos + 1]
  local n = tonumber(ARGV[pos + 2])
  if redis.call('HSETNX', KEYS[1], order_id, ARGV[1] .. ARGV[4]) == 1 then
    rq_save_job(KEYS[i], shared, c, pos + 3, n)
    fair_push(KEYS[6], KEYS[7], KEYS[8], KEYS[3], ARGV[2], job_id)
    if record_ttl > 0 then
      local record = KEYS[i + jobs]
      redis.call('DEL', record)
      redis.call('HSET', record, unpack(ARGV, pos + 3, pos + 2 + n))
      redis.call('EXPIRE', record, record_ttl)
    end
    new[#new + 1] = order_id
  end
  pos = pos + 3 + n
end
if #new > 0 then
  rq_register_queue(KEYS[3], ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[2])
  redis.call('HINCRBY', KEYS[5], 'orders_dispatched', #new)
  count_throughput(KEYS[9], 'dispatched', ARGV[1], #new)
  fair_feed(KEYS[2], KEYS[7], KEYS[8], KEYS[3], tonumber(ARGV[1]), fair_config(pos))
end
return new
