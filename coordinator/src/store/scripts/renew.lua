-- ARGV: item, lease id, epoch, ttl_ms. Returns ok, done or lost.
if cancelled() then return 'lost' end
local now = now_ms()
local item = ARGV[1]
if live(item, ARGV[2], tonumber(ARGV[3]), now) then
  local expires = now + tonumber(ARGV[4])
  set(item, 'exp', expires)
  redis.call('ZADD', KEYS[4], expires, item)
  return 'ok'
end
return refusal(item)
