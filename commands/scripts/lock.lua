-- LOCK: take the lock, or take it again with the holder's own token (a retried LOCK).
-- KEYS[1]  the lock key (its value is the holder's token)
-- KEYS[2]  the fence counter of the lock's slot (touched only when ARGV[3] is "1")
-- ARGV[1]  token
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  "1" to advance and return the fence, else "0"
-- Returns  {1, fence} when held by ARGV[1] now (fence is 0 without FENCE),
--          {0, pttl}  when another token holds it (pttl: its remaining TTL in ms, -1 if none).
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = 0
if ARGV[3] == '1' then
  local prev = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if cur then
    -- The same holder retrying: its acquisition already advanced the counter.
    fence = prev
  else
    -- max(counter + 1, server time in microseconds): strictly increasing, and still ahead of
    -- every fence issued before a failover that lost the counter's last writes.
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    fence = math.max(prev + 1, now)
    redis.call('SET', KEYS[2], string.format('%.0f', fence))
  end
end
return {1, fence}
