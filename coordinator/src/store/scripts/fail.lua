-- ARGV: item, lease id, epoch, reason, permanent (0/1), max_attempts, jitter in [0,1),
-- backoff base ms, backoff cap ms. Returns {status, dead (0/1)}.
if cancelled() then return {'lost', 0} end
local now = now_ms()
local item = ARGV[1]
if not live(item, ARGV[2], tonumber(ARGV[3]), now) then return {refusal(item), 0} end
local attempts = redis.call('HINCRBY', KEYS[2], field(item, 'attempts'), 1)
set(item, 'error', ARGV[4], 'holder', '')
redis.call('ZREM', KEYS[4], item)
if ARGV[5] == '1' or attempts >= tonumber(ARGV[6]) then
  set(item, 'state', 'dead')
  redis.call('HINCRBY', KEYS[1], 'dead', 1)
  return {'ok', 1}
end
local ceiling = math.min(tonumber(ARGV[9]), tonumber(ARGV[8]) * 2 ^ (attempts - 1))
set(item, 'state', 'pending')
redis.call('ZADD', KEYS[3], now + math.floor(tonumber(ARGV[7]) * ceiling), item)
return {'ok', 0}
