#!lua
-- transfer: end the lease of ARGV[1], apply an update to the state object
-- and grant the lock to ARGV[5], in one step.
--
-- KEYS[1] lock hash, KEYS[2] fence counter, KEYS[3] state object,
-- KEYS[4] delay key
-- ARGV[1] current holder
-- ARGV[2] 'keep', 'set' or 'delete'
-- ARGV[3] the new value for 'set'
-- ARGV[4] object TTL in ms for 'set', '0' for none
-- ARGV[5] next holder, ARGV[6] its owner label, ARGV[7] its lease in ms,
-- ARGV[8] its lock-delay in ms
--
-- Reply: {0} when ARGV[1] does not hold the lock (nothing changed);
-- otherwise {1, token, owner, lease ms, pttl ms, has value, value,
-- lock-delay ms}.
local lock, fence, obj, dkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', lock, 'h') ~= ARGV[1] then
  return {0}
end
apply_update(obj, ARGV[2], ARGV[3], ARGV[4])
local token = grant(lock, fence, dkey, ARGV[5], ARGV[6], ARGV[7], ARGV[8])
local pttl = redis.call('PTTL', lock)
local v = redis.call('GET', obj)
if v then
  return {1, token, ARGV[6], ARGV[7], pttl, 1, v, ARGV[8]}
end
return {1, token, ARGV[6], ARGV[7], pttl, 0, '', ARGV[8]}
