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

-- grant gives the lock to holder with a new token from the fence counter
-- and returns the token (a string: Lua numbers are doubles).
local function grant(lock, fence, holder, owner, lease)
  redis.call('INCR', fence)
  local token = redis.call('GET', fence)
  redis.call('DEL', lock) -- the previous lease, or a malformed hash without a holder
  redis.call('HSET', lock, 'h', holder, 'o', owner, 't', token, 'l', lease)
  redis.call('PEXPIRE', lock, lease)
  return token
end
