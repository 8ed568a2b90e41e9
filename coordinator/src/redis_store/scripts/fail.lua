-- ARGV: item, lease id, epoch, worker, reason, permanent (0/1), max_attempts, jitter in [0,1),
-- backoff base ms, backoff cap ms. Returns {status, dead (0/1)}.
if cancelled() then return {'lost', 0} end
local now = now_ms()
local item = ARGV[1]
if not live(item, ARGV[2], tonumber(ARGV[3]), now) then return {refusal(item), 0} end
if not held_by(item, ARGV[4]) then return {'denied', 0} end
local attempts = redis.call('HINCRBY', KEYS[2], field(item, 'attempts'), 1)
set(item, 'error', ARGV[5], 'holder', '')
redis.call('ZREM', KEYS[4], item)
unhold(item, ARGV[4])
if ARGV[6] == '1' or attempts >= tonumber(ARGV[7]) then
  set(item, 'state', 'dead')
  redis.call('HINCRBY', KEYS[1], 'dead', 1)
  redis.call('HSET', KEYS[1], 'ended', now)
  return {'ok', 1}
end
local ceiling = math.min(tonumber(ARGV[10]), tonumber(ARGV[9]) * 2 ^ (attempts - 1))
set(item, 'state', 'pending')
redis.call('ZADD', KEYS[3], now + math.floor(tonumber(ARGV[8]) * ceiling), item)
return {'ok', 0}
