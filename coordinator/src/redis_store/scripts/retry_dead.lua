-- Returns how many dead items went back to pending with fresh counts (-1: no such job). If
-- any did, the job is active again (unless cancelled), in the same step: nothing can retire
-- it in between.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local now = now_ms()
local retried = 0
for _, item in ipairs(redis.call('HKEYS', KEYS[5])) do
  if get(item, 'state') == 'dead' then
    set(item, 'state', 'pending', 'attempts', 0, 'expiries', 0)
    redis.call('ZADD', KEYS[3], now, item)
    retried = retried + 1
  end
end
if retried > 0 then
  redis.call('HINCRBY', KEYS[1], 'dead', 0 - retried)
  activate()
end
return retried
