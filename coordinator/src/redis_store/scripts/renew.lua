-- ARGV: item, lease id, epoch, worker, ttl_ms. Returns ok, done, lost or denied (the grant is
-- live but held by another worker).
if cancelled() then return 'lost' end
local now = now_ms()
contact(KEYS[10], ARGV[4], now, tonumber(ARGV[5]))
local item = ARGV[1]
if live(item, ARGV[2], tonumber(ARGV[3]), now) then
  if not held_by(item, ARGV[4]) then return 'denied' end
  local expires = now + tonumber(ARGV[5])
  set(item, 'exp', expires)
  redis.call('ZADD', KEYS[4], expires, item)
  hold(item, ARGV[4], expires)
  return 'ok'
end
return refusal(item)
