#!lua
-- force: end the live lease whoever holds it, as a release that leaves the
-- state object and the fence counter alone (the next grant's token is
-- higher than the ended lease's).
--
-- KEYS[1] lock hash
--
-- Reply: {1, token, owner, lease ms, pttl ms} for the lease it ended; {0}
-- when no lease was live (nothing changed).
local cur = redis.call('HMGET', KEYS[1], 'h', 'o', 't', 'l')
if not cur[1] then
  return {0}
end
local pttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {1, cur[3] or '0', cur[2] or '', cur[4] or '0', pttl}
