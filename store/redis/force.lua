#!lua
-- force: end the live lease whoever holds it, as a release that leaves the
-- state object and the fence counter alone (the next grant's token is
-- higher than the ended lease's). A lease with a lock-delay keeps the key
-- from everyone for the delay, counted from now.
--
-- KEYS[1] lock hash, KEYS[2] delay key
--
-- Reply: {1, token, owner, lease ms, pttl ms} for the lease it ended; {0}
-- when no lease was live (nothing changed).
local cur = redis.call('HMGET', KEYS[1], 'h', 'o', 't', 'l', 'd')
if not cur[1] then
  return {0}
end
local pttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
local d = tonumber(cur[5] or '0') or 0
if d > 0 then
  redis.call('SET', KEYS[2], (cur[3] or '0') .. ' ' .. (cur[2] or ''), 'PX', d) -- as hold_delay
else
  redis.call('DEL', KEYS[2])
end
return {1, cur[3] or '0', cur[2] or '', cur[4] or '0', pttl}
