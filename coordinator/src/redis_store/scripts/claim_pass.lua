-- Claims a standing job's due pass. ARGV: 1 interval (ms), '' when the job's follow spec is
-- unreadable. Returns 1 when the pass was due: its next check moves on by the interval in
-- the same step, so of several coordinators exactly one runs it. 0 when it was not due;
-- -1 when the job is gone, cancelled or follows nothing (it leaves the standing set).
local job = job_id()
if ARGV[1] == '' or cancelled() or redis.call('HEXISTS', KEYS[1], 'follow') == 0 then
  redis.call('ZREM', KEYS[9], job)
  return -1
end
local now = now_ms()
local next_check = redis.call('ZSCORE', KEYS[9], job)
if next_check and tonumber(next_check) <= now then
  redis.call('ZADD', KEYS[9], now + tonumber(ARGV[1]), job)
  return 1
end
return 0
