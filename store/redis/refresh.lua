#!lua
-- refresh: renew the lease of its holder, keeping the token and the
-- lock-delay.
--
-- KEYS[1] lock hash, KEYS[2] delay key
-- ARGV[1] holder, ARGV[2] new lease length in ms
--
-- Reply: {1, token, owner} when renewed; {0} when ARGV[1] does not hold
-- the lock (nothing changed).
local cur = redis.call('HMGET', KEYS[1], 'h', 'o', 't')
if cur[1] ~= ARGV[1] then
  return {0}
end
redis.call('HSET', KEYS[1], 'l', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
hold_delay(KEYS[1], KEYS[2], cur[3] or '0', ARGV[2])
return {1, cur[3] or '0', cur[2] or ''}
