-- steps: functions shared by the scripts. New places this text after the
-- first line (the #!lua shebang) of acquire.lua, update.lua and
-- transfer.lua, so each step is written once and every script still runs
-- in one EVALSHA.

-- apply_update applies an update to the state object obj.
-- op: 'keep', 'set' or 'delete'; value: the new value for 'set';
-- ttl: object TTL in ms for 'set', '0' for none.
local function apply_update(obj, op, value, ttl)
  if op == 'set' then
    if ttl ~= '0' then
      redis.call('SET', obj, value, 'PX', ttl)
    else
      redis.call('SET', obj, value) -- SET drops any earlier TTL
    end
  elseif op == 'delete' then
    redis.call('DEL', obj)
  end
end

-- hold_delay makes the delay key dkey outlast the lease of lock (ms) by its
-- lock-delay (field d), or removes it when the lease has none. The delay
-- key holds the lease's token and owner label, separated by the first
-- space (a token has none).
local function hold_delay(lock, dkey, token, lease)
  local f = redis.call('HMGET', lock, 'd', 'o')
  local d = tonumber(f[1] or '0') or 0
  if d > 0 then
    redis.call('SET', dkey, token .. ' ' .. (f[2] or ''), 'PX', tonumber(lease) + d)
  else
    redis.call('DEL', dkey)
  end
end

-- grant gives the lock to holder with a new token from the fence counter
-- and returns the token (a string: Lua numbers are doubles). delay is the
-- lease's lock-delay in ms ('0': none).
local function grant(lock, fence, dkey, holder, owner, lease, delay)
  redis.call('INCR', fence)
  local token = redis.call('GET', fence)
  redis.call('DEL', lock) -- the previous lease, or a malformed hash without a holder
  redis.call('HSET', lock, 'h', holder, 'o', owner, 't', token, 'l', lease, 'd', delay)
  redis.call('PEXPIRE', lock, lease)
  hold_delay(lock, dkey, token, lease)
  return token
end

-- grantable_in is how long (ms) until the key can be granted unless it is
-- released first: the lease's PTTL, or the delay key's when longer.
local function grantable_in(lock, dkey)
  local p, pd = redis.call('PTTL', lock), redis.call('PTTL', dkey)
  if pd > p then
    return pd
  end
  return p
end
