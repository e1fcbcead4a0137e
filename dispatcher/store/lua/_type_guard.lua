-- Fragment type_guard: before the script writes anything, refuse it when one of its keys
-- holds another type than the script's KEY_TYPES names (an absent key is fine). Redis does
-- not roll back a script that fails part-way: a WRONGTYPE on its third write would leave the
-- first two written (an order marked seen but never enqueued). TYPE is cheap, and nothing
-- changes a key between this check and the writes of one script.
-- KEYS[1..#KEY_TYPES] the including script's keys, in the order of its KEY_TYPES
-- ARGV none read
-- Returns: (from the script, when a key is of another type) the error
--   'DISPATCHER_WRONGTYPE <index in KEYS> <type found>', which the runner raises as
--   dispatcher.store.wrongtype.WrongKeyTypeError naming the key; else goes on.
for i, expected in ipairs(KEY_TYPES) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= expected then
    return redis.error_reply('DISPATCHER_WRONGTYPE ' .. i .. ' ' .. found)
  end
end
