-- RENEW: reset the TTL if the token still holds the lock.
-- KEYS[1]  the lock key
-- ARGV[1]  token
-- ARGV[2]  TTL in milliseconds
-- Returns  1 renewed, 0 not held by that token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
