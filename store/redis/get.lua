#!lua flags=no-writes
-- get: read the lock and the state object without changing them.
--
-- KEYS[1] lock hash, KEYS[2] fence counter, KEYS[3] state object,
-- KEYS[4] delay key
--
-- Reply: {locked, token, owner, lease ms, pttl ms, has value, value, delay ms}
-- When unlocked, token is the fence counter (the last grant's token, '0'
-- for a key never granted), owner, lease and pttl are empty, and delay is
-- what is left of the lock-delay of the lease that ended (0: none).
local cur = redis.call('HMGET', KEYS[1], 'h', 'o', 't', 'l')
local r
if cur[1] then
  r = {1, cur[3] or '0', cur[2] or '', cur[4] or '0', redis.call('PTTL', KEYS[1])}
else
  r = {0, redis.call('GET', KEYS[2]) or '0', '', '0', 0}
end
local delay = 0
if not cur[1] then
  delay = math.max(redis.call('PTTL', KEYS[4]), 0)
end
local v = redis.call('GET', KEYS[3])
if v then
  r[6], r[7] = 1, v
else
  r[6], r[7] = 0, ''
end
r[8] = delay
return r
