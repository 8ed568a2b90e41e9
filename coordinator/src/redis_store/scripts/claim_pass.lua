-- Claims a standing job's due pass. KEYS: 1 the standing set (job -> next check, ms).
-- ARGV: 1 job id, 2 interval (ms). Moves the next check on by the interval and returns 1 when
-- the pass was due, so of several coordinators exactly one runs it; 0 otherwise.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next_check = redis.call('ZSCORE', KEYS[1], ARGV[1])
if next_check and tonumber(next_check) <= now then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
