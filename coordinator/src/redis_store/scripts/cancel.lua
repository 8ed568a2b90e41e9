-- Cancels the job: nothing more is granted, live grants are lost (every transition checks
-- `cancelled`) and stop counting against their holders' lease cap, and it leaves the active
-- and standing sets, in one step. Returns 1, or 0 when there is no such job (nothing is
-- written then).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'cancelled') ~= '1' then
  for _, item in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    unhold(item, get(item, 'holder'))
  end
end
redis.call('HSET', KEYS[1], 'cancelled', '1', 'ended', now_ms())
redis.call('ZREM', KEYS[8], job_id())
redis.call('ZREM', KEYS[9], job_id())
return 1
