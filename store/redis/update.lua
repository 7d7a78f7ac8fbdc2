#!lua
-- update: apply an update to the state object if ARGV[1] holds the lock;
-- with ARGV[5] 'release' also end the lease, in the same step.
--
-- KEYS[1] lock hash, KEYS[2] state object, KEYS[3] delay key
-- ARGV[1] holder
-- ARGV[2] 'keep', 'set' or 'delete'
-- ARGV[3] the new value for 'set'
-- ARGV[4] object TTL in ms for 'set', '0' for none
-- ARGV[5] 'release' to end the lease, 'write' to keep it
--
-- Reply: 1 when applied; 0 when ARGV[1] does not hold the lock (nothing
-- changed).
if redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then
  return 0
end
apply_update(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
if ARGV[5] == 'release' then
  redis.call('DEL', KEYS[1], KEYS[3]) -- a release hands over at once: no lock-delay
end
return 1
