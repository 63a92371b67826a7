-- UNLOCK: compare-and-delete, then tell every proxy waiting on this lock.
-- KEYS[1]  the lock key
-- ARGV[1]  token
-- Returns  1 released, 0 not held by that token (expired, or someone else's).
-- Publishes "released" on the shard channel named like the lock key (same slot).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SPUBLISH', KEYS[1], 'released')
  return 1
end
return 0
