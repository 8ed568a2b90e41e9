-- Records the end of a standing job's pass: counted, and a success (ARGV[1] '1') dated, or
-- a failure's reason (ARGV[2]) kept as the last error. Returns 1, or 0 when there is no such
-- job (nothing is written then; a one-off job keeps no pass record either).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'follow') == 0 then return 1 end
redis.call('HINCRBY', KEYS[1], 'follow_passes', 1)
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'follow_success', now_ms(), 'follow_error', '')
else
  redis.call('HSET', KEYS[1], 'follow_error', ARGV[2])
end
return 1
