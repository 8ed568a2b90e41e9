-- ARGV: item, lease id, epoch. Returns ok, done or lost. No attempt is counted.
if cancelled() then return 'lost' end
local now = now_ms()
local item = ARGV[1]
if not live(item, ARGV[2], tonumber(ARGV[3]), now) then return refusal(item) end
set(item, 'state', 'pending', 'holder', '')
redis.call('ZREM', KEYS[4], item)
redis.call('ZADD', KEYS[3], now, item)
return 'ok'
