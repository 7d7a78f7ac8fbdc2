#!lua flags=no-writes
-- lease: read the lease alone, never the state object (List).
--
-- KEYS[1] lock hash
--
-- Reply: {token, owner, lease ms, pttl ms} when a lease is live; {} when
-- none is.
local cur = redis.call('HMGET', KEYS[1], 'h', 'o', 't', 'l')
if not cur[1] then
  return {}
end
return {cur[3] or '0', cur[2] or '', cur[4] or '0', redis.call('PTTL', KEYS[1])}
