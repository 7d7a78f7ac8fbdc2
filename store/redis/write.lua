#!lua
-- write: apply an update to the state object if ARGV[1] holds the lock,
-- keeping the lease as it is.
--
-- KEYS[1] lock hash, KEYS[2] state object
-- ARGV[1] holder
-- ARGV[2] 'keep', 'set' or 'delete'
-- ARGV[3] the new value for 'set'
-- ARGV[4] object TTL in ms for 'set', '0' for none
--
-- Reply: 1 when applied; 0 when ARGV[1] does not hold the lock (nothing
-- changed).
if redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'set' then
  if ARGV[4] ~= '0' then
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[2], ARGV[3]) -- SET drops any earlier TTL
  end
elseif ARGV[2] == 'delete' then
  redis.call('DEL', KEYS[2])
end
return 1
