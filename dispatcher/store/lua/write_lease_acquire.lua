-- Take one of an integration's Kombo write slots (dispatcher.store.leases.WriteLeases):
-- expired leases are dropped first; a holder renews its own lease whatever the count.
-- KEYS[1] the integration's lease zset (holder -> lease expiry)
-- ARGV[1] now (unix time)
-- ARGV[2] cap (slots)
-- ARGV[3] holder
-- ARGV[4] lease expiry (unix time)
-- Returns: 1 when the slot is held; 0 when every slot is taken.
local KEY_TYPES = {'zset'}
--#include type_guard
--#include write_slot
if take_write_slot(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 1 end
return 0
