-- ARGV: item, lease id, epoch, worker. Returns ok, done, lost or denied. No attempt is counted.
if cancelled() then return 'lost' end
local now = now_ms()
local item = ARGV[1]
if not live(item, ARGV[2], tonumber(ARGV[3]), now) then return refusal(item) end
if not held_by(item, ARGV[4]) then return 'denied' end
set(item, 'state', 'pending', 'holder', '')
redis.call('ZREM', KEYS[4], item)
unhold(item, ARGV[4])
redis.call('ZADD', KEYS[3], now, item)
return 'ok'
