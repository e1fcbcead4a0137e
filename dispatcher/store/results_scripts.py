"""The Lua scripts of the results outbox (dispatcher/store/results.py): each moves one order's
result in one atomic step, its KEYS and ARGV documented above it. Every script first checks
the types of the keys it writes (:func:`dispatcher.store.wrongtype.lua_type_guard`).
"""

from __future__ import annotations

from dispatcher.store import throughput
from dispatcher.store.wrongtype import lua_type_guard

__all__ = [
    "BEGIN_SCRIPT",
    "BEGIN_TYPES",
    "FAILED_SCRIPT",
    "FAILED_TYPES",
    "PROVISIONED_SCRIPT",
    "PROVISIONED_TYPES",
    "RESCHEDULE_SCRIPT",
    "RESCHEDULE_TYPES",
    "SUBMIT_SCRIPT",
    "SUBMIT_TYPES",
    "TIMELINE_MAX_EVENTS",
    "WRITTEN_SCRIPT",
    "WRITTEN_TYPES",
]

# The timeline of an order keeps its last events only (a client submitting partial results
# in a loop must not grow it without end).
TIMELINE_MAX_EVENTS = 200

# Lua: when a body is on its way, a new one waits as ``next_*`` (see the module doc); these
# are the fields that move.
_NEXT_FIELDS = "'next_body', 'next_submission', 'next_digest', 'next_status', 'next_submitted_at'"
# Lua (KEYS[1] the outbox hash): make the waiting body the pending one; false when none.
_LUA_PROMOTE = (
    """
local function promote()
  local n = redis.call('HMGET', KEYS[1], """
    + _NEXT_FIELDS
    + """)
  if not n[2] then return false end
  redis.call('HSET', KEYS[1], 'body', n[1], 'submission', n[2], 'digest', n[3], 'status', n[4],
    'submitted_at', n[5], 'attempts', 0)
  redis.call('HDEL', KEYS[1], """
    + _NEXT_FIELDS
    + """, 'sent', 'next_attempt_at', 'last_error')
  return true
end
"""
)

# KEYS: 1 outbox hash, 2 results hash, 3 pending zset, 4 failed zset, 5 written zset,
#       6 queue list, 7 rq:queues set, 8 timeline list, 9 seen hash (the ledger's), 10 job hash.
# ARGV: 1 order id, 2 digest, 3 body, 4 status, 5 now, 6 submission id, 7 integration id,
#       8 order ref, 9 queue key, 10 job id, 11 timeline TTL, 12 event (JSON), 13 require the
#       order dispatched ("1"/"0"), 14.. job hash field/value items.
SUBMIT_TYPES = ("hash", "hash", "zset", "zset", "zset", "list", "set", "list", "hash")
SUBMIT_SCRIPT = (
    lua_type_guard(SUBMIT_TYPES)
    + """
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
local function event()
  redis.call('RPUSH', KEYS[8], ARGV[12])
  redis.call('LTRIM', KEYS[8], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
  redis.call('EXPIRE', KEYS[8], ARGV[11])
end
if state == 'pending' and current[5] == '1' then
  -- An attempt of the pending body was sent: Kombo may hold it. A final one takes no other;
  -- after a partial one, this body waits its turn (the same job writes it next).
  if current[6] == 'COMPLETED' or current[6] == 'CANCELLED' then
    return {'busy', current[6]}
  end
  redis.call('HSET', KEYS[1], 'next_body', ARGV[3], 'next_submission', ARGV[6],
    'next_digest', ARGV[2], 'next_status', ARGV[4], 'next_submitted_at', ARGV[5])
  event()
  return {current[8] and 'replaced' or 'queued', ARGV[6], ARGV[5], 'pending'}
end
redis.call('HSET', KEYS[1], 'integration', ARGV[7], 'order', ARGV[1], 'digest', ARGV[2],
  'body', ARGV[3], 'status', ARGV[4], 'submission', ARGV[6], 'submitted_at', ARGV[5])
if state == 'pending' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
  event()
  return {'replaced', ARGV[6], ARGV[5], 'pending'}
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'job', ARGV[10], 'attempts', 0)
redis.call('HDEL', KEYS[1], 'next_attempt_at', 'last_error', 'written_at', 'warnings',
  'lost_answer', 'reason', 'failed_at', 'sent', 'read_back', 'kombo_result', """
    + _NEXT_FIELDS
    + """)
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
redis.call('ZREM', KEYS[4], ARGV[8])
redis.call('ZREM', KEYS[5], ARGV[8])
if redis.call('TYPE', KEYS[10])['ok'] ~= 'none' then redis.call('DEL', KEYS[10]) end
redis.call('HSET', KEYS[10], unpack(ARGV, 14, #ARGV))
redis.call('RPUSH', KEYS[6], ARGV[10])
redis.call('SADD', KEYS[7], ARGV[9])
event()
return {'queued', ARGV[6], ARGV[5], 'pending'}
"""
)

# KEYS: 1 outbox hash. ARGV: 1 job id, 2 submission id.
# An attempt of the pending body is about to be sent: counted, and the body locked (``sent``).
BEGIN_TYPES = ("hash",)
BEGIN_SCRIPT = (
    lua_type_guard(BEGIN_TYPES)
    + """
local current = redis.call('HMGET', KEYS[1], 'state', 'job', 'submission')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
if current[3] ~= ARGV[2] then return 'changed' end
redis.call('HSET', KEYS[1], 'sent', '1')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'begun'
"""
)

# KEYS: 1 outbox hash, 2 results hash, 3 stats hash, 4 pending zset, 5 written zset,
#       6 timeline list, 7 provisioned zset, 8 result-stats hash, 9 the hour's throughput
#       hash (the console's chart, store/throughput.py: skipped when of another type).
# ARGV: 1 job id, 2 submission id, 3 now, 4 warnings (JSON), 5 lost answer ("1"/"0"),
#       6 outbox TTL, 7 order id, 8 results record (JSON, "" for a partial result), 9 order
#       ref, 10 written-index cutoff, 11 timeline TTL, 12 event, 13 integration id,
#       14 latency seconds, 15 read-back verdict ("" without a read-back), 16 the result Kombo
#       showed it holds (JSON, "" when none), 17.. histogram bucket fields to bump.
# A partial result written while another body waits (``next_*``): that one becomes the pending
# body, for the same job to write next ('next').
WRITTEN_TYPES = ("hash", "hash", "hash", "zset", "zset", "list", "zset", "hash")
WRITTEN_SCRIPT = (
    lua_type_guard(WRITTEN_TYPES)
    + _LUA_PROMOTE
    + """
local current = redis.call('HMGET', KEYS[1], 'state', 'job', 'submission')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
if current[3] ~= ARGV[2] then return 'superseded' end
redis.call('HINCRBY', KEYS[8], ARGV[13] .. '|written', 1)
redis.call('HINCRBYFLOAT', KEYS[8], ARGV[13] .. '|latency_sum', ARGV[14])
for i = 17, #ARGV do redis.call('HINCRBY', KEYS[8], ARGV[13] .. '|le|' .. ARGV[i], 1) end
redis.call('RPUSH', KEYS[6], ARGV[12])
redis.call('LTRIM', KEYS[6], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
redis.call('EXPIRE', KEYS[6], ARGV[11])
if ARGV[8] == '' and promote() then return 'next' end
redis.call('HSET', KEYS[1], 'state', 'written', 'written_at', ARGV[3], 'warnings', ARGV[4],
  'lost_answer', ARGV[5])
redis.call('HDEL', KEYS[1], 'next_attempt_at', 'read_back', 'kombo_result', """
    + _NEXT_FIELDS
    + """)
if ARGV[15] ~= '' then redis.call('HSET', KEYS[1], 'read_back', ARGV[15]) end
if ARGV[16] ~= '' then redis.call('HSET', KEYS[1], 'kombo_result', ARGV[16]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZREM', KEYS[4], ARGV[9])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[10])
if ARGV[8] ~= '' then
  if redis.call('HSET', KEYS[2], ARGV[7], ARGV[8]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'results_written', 1)
"""
    + throughput.lua_count("KEYS[9]", "results", "ARGV[3]", "1")
    + """
  end
  redis.call('ZREM', KEYS[7], ARGV[9])
end
return 'written'
"""
)

# KEYS: 1 outbox hash, 2 pending zset, 3 failed zset, 4 timeline list, 5 result-stats hash.
# ARGV: 1 job id, 2 now, 3 reason, 4 outbox TTL, 5 order ref, 6 timeline TTL, 7 event,
#       8 integration id.
FAILED_TYPES = ("hash", "zset", "zset", "list", "hash")
FAILED_SCRIPT = (
    lua_type_guard(FAILED_TYPES)
    + _LUA_PROMOTE
    + """
local current = redis.call('HMGET', KEYS[1], 'state', 'job')
if current[1] ~= 'pending' or current[2] ~= ARGV[1] then return 'stale' end
redis.call('HINCRBY', KEYS[5], ARGV[8] .. '|failed', 1)
redis.call('RPUSH', KEYS[4], ARGV[7])
redis.call('LTRIM', KEYS[4], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
redis.call('EXPIRE', KEYS[4], ARGV[6])
if promote() then return 'next' end
redis.call('HSET', KEYS[1], 'state', 'failed', 'failed_at', ARGV[2], 'reason', ARGV[3])
redis.call('HDEL', KEYS[1], 'next_attempt_at')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
return 'failed'
"""
)

# KEYS: 1 outbox hash, 2 scheduled registry zset, 3 queue list, 4 rq:queues set, 5 new job
#       hash. ARGV: 1 current job id, 2 new job id, 3 when (unix time; <= now: queued at once),
#       4 unused (attempts are counted when sent, by BEGIN_SCRIPT), 5 last error, 6 queue key,
#       7 now, 8.. job hash items.
# Hands the pending write to a new job: the current one ends, the new one runs at ``when``.
RESCHEDULE_TYPES = ("hash", "zset", "list", "set")
RESCHEDULE_SCRIPT = (
    lua_type_guard(RESCHEDULE_TYPES)
    + """
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
"""
)


# KEYS: 1 provisioned zset, 2 results hash, 3 timeline list. ARGV: 1 now, 2 order ref, 3 order
# id, 4 event, 5 timeline TTL. An order whose final result is already written is not stale.
PROVISIONED_TYPES = ("zset", "hash", "list")
PROVISIONED_SCRIPT = (
    lua_type_guard(PROVISIONED_TYPES)
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2])
end
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], -"""
    + str(TIMELINE_MAX_EVENTS)
    + """, -1)
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
"""
)
