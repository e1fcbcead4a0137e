-- Mark an order finished after Kombo accepted its result (dispatcher.kombo.results
-- .record_result): the record and the counter together. A second write for the same order
-- adds no count (the counter counts finished orders).
-- KEYS[1] results hash
-- KEYS[2] stats hash
-- KEYS[3] the hour's throughput hash (not type-checked: skipped when of another type)
-- ARGV[1] order id
-- ARGV[2] record (JSON)
-- ARGV[3] unix time (whole seconds; the one KEYS[3] is of)
-- Returns: 1.
local KEY_TYPES = {'hash', 'hash'}
--#include type_guard
--#include throughput
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'results_written', 1)
  count_throughput(KEYS[3], 'results', ARGV[3], 1)
end
return 1
