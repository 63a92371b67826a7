-- UNLOCK: compare-and-delete, then tell every proxy waiting on this lock.
-- KEYS[1]  the lock key
-- ARGV[1]  token
-- ARGV[2]  "1" when the proxy's next waiter tries to take the lock right after this script on
--          the same connection: the lock is not left free, so nobody else is told (optional)
-- ARGV[3]  with ARGV[2]: how many subscriptions to the channel below are the proxy's own
-- Returns  1 released, 0 not held by that token (expired, or someone else's),
--          2 released and handed over while other proxies wait for the lock too (they
--          subscribe to the channel below): the proxy does not hand the next release over.
-- Else publishes "released" on the shard channel named like the lock key (same slot), when
-- anyone subscribes to it: a waiting proxy subscribes on this primary before it tries, so one
-- whose subscription is not counted yet tries after this release and finds the lock free. (A
-- shard message costs the primary and every replica of the shard a cluster-bus message even
-- with nobody listening.)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  local subscribers = redis.call('PUBSUB', 'SHARDNUMSUB', KEYS[1])[2]
  if ARGV[2] ~= '1' then
    if subscribers > 0 then
      redis.call('SPUBLISH', KEYS[1], 'released')
    end
    return 1
  end
  if subscribers > (tonumber(ARGV[3]) or 0) then
    return 2
  end
  return 1
end
return 0
