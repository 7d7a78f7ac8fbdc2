#!lua
-- acquire: take the lock for a holder when it is free, or report the live
-- lease. All keys share one hash tag, so the script runs on one slot.
--
-- KEYS[1] lock hash (h holder, o owner, t token, l lease ms, d lock-delay ms)
-- KEYS[2] fence counter (INCR, never reset)
-- KEYS[3] state object
-- KEYS[4] delay key: the token and owner label of the last lease ("token
--         owner"), living until its lock-delay after its end (absent when
--         the lease has none)
-- ARGV[1] holder (hex of sha256(lock id)[:16])
-- ARGV[2] owner label
-- ARGV[3] lease length in ms
-- ARGV[4] '1' when the caller will WAIT for replicas after the script
-- ARGV[5] lock-delay in ms ('0': none)
--
-- Reply: {status, token, owner, lease ms, pttl ms, has value, value,
-- lock-delay ms}
--   status 1: granted now; 2: already held by this holder (the same grant,
--   unchanged); 0: held by another holder, pttl = until the key can be
--   granted (only the first five fields); 3: the lease ended and its
--   lock-delay runs for pttl more (token and owner of the ended lease).
local lock, fence, obj, dkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cur = redis.call('HMGET', lock, 'h', 'o', 't', 'l')
local status, token, owner, lease, delay
if not cur[1] then
  local delayed = redis.call('GET', dkey)
  if delayed then
    local tok, own = delayed, ''
    local sp = string.find(delayed, ' ', 1, true)
    if sp then
      tok, own = string.sub(delayed, 1, sp - 1), string.sub(delayed, sp + 1)
    end
    return {3, tok, own, '0', redis.call('PTTL', dkey)}
  end
end
if cur[1] then
  if cur[1] ~= ARGV[1] then
    return {0, cur[3] or '0', cur[2] or '', cur[4] or '0', grantable_in(lock, dkey)}
  end
  if ARGV[4] == '1' then
    -- Rewrite the holder unchanged: it moves this connection's replication
    -- offset past the original grant, so the WAIT that follows covers it.
    redis.call('HSET', lock, 'h', ARGV[1])
  end
  status, token, owner, lease = 2, cur[3] or '0', cur[2] or '', cur[4] or '0'
  delay = redis.call('HGET', lock, 'd') or '0'
else
  token = grant(lock, fence, dkey, ARGV[1], ARGV[2], ARGV[3], ARGV[5])
  status, owner, lease, delay = 1, ARGV[2], ARGV[3], ARGV[5]
end
local pttl = redis.call('PTTL', lock)
local v = redis.call('GET', obj)
if v then
  return {status, token, owner, lease, pttl, 1, v, delay}
end
return {status, token, owner, lease, pttl, 0, '', delay}
