-- UNLOCK: compare-and-delete, then tell every proxy waiting on this lock.
-- KEYS[1]  the lock key
-- ARGV[1]  token
-- ARGV[2]  "1" when the proxy's next waiter tries to take the lock right after this script on
--          the same connection: the lock is not left free, so nobody else is told (optional)
-- Returns  1 released, 0 not held by that token (expired, or someone else's).
-- Else publishes "released" on the shard channel named like the lock key (same slot).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '1' then
    redis.call('SPUBLISH', KEYS[1], 'released')
  end
  return 1
end
return 0
