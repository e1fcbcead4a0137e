-- Forget seen orders: deletes a field only if it still holds the value pruning decided on (a
-- concurrent full sweep may just have marked it OPEN).
-- KEYS[1] seen hash
-- ARGV[1..] field, expected value pairs
-- Returns: how many fields were deleted.
local deleted = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return deleted
