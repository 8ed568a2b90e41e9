-- Cancels the job: nothing more is granted, live grants are lost (every transition checks
-- `cancelled`), and it leaves the active and standing sets, in one step. Returns 1, or 0
-- when there is no such job (nothing is written then).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancelled', '1', 'ended', now_ms())
redis.call('ZREM', KEYS[8], job_id())
redis.call('ZREM', KEYS[9], job_id())
return 1
