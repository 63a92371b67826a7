-- LOCKINFO: the holder's token and remaining TTL, read atomically.
-- KEYS[1]  the lock key
-- Returns  nil when free, else {token, pttl}.
local v = redis.call('GET', KEYS[1])
if not v then
  return false
end
return {v, redis.call('PTTL', KEYS[1])}
