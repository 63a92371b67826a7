-- SAFESET: a write guarded by the lock on the same key, in one atomic step.
-- KEYS[1]  the lock key of KEYS[2]
-- KEYS[2]  the data key
-- ARGV[1]  "owner": set only if ARGV[2] holds the lock; "free": set only if nobody holds it
-- ARGV[2]  token (ignored for "free")
-- ARGV[3]  value
-- ARGV[4..] SET expiry options: EX n | PX n | KEEPTTL, or nothing
-- Returns  OK (status) when written, nil when the guard failed.
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == 'owner' then
  if cur ~= ARGV[2] then
    return false
  end
elseif cur then
  return false
end
return redis.call('SET', KEYS[2], ARGV[3], unpack(ARGV, 4))
