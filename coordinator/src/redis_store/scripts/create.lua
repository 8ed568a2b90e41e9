-- Publishes a job whose items are written (they are invisible until now: no meta, in no
-- index): its meta, and its place in era5:jobs, era5:active and, for a standing job,
-- era5:standing, in one step, with its creation time from Redis. ARGV: 1 spec (JSON),
-- 2 items, 3 objects, 4 bytes, 5 follow (JSON, '' for a one-off job), 6 follow interval (ms),
-- 7 the fleet's bandwidth budget ('' for none).
-- Returns 1, or 0 when the job exists already (nothing is written then).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = now_ms()
local job = job_id()
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'follow', ARGV[5], 'follow_passes', 0, 'follow_success', now,
    'follow_error', '')
  redis.call('ZADD', KEYS[9], now + tonumber(ARGV[6]), job)
end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'created', now, 'cancelled', 0, 'done', 0,
  'dead', 0, 'done_bytes', 0, 'items', ARGV[2], 'objects_total', ARGV[3],
  'bytes_total', ARGV[4])
-- Which Redis process the job was created under: acquire holds grants of a job whose state
-- came through a restart (see acquire.lua).
local run_id = server()
redis.call('HSET', KEYS[1], 'run_id', run_id or '')
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'bwlimit', ARGV[7]) end
redis.call('ZADD', KEYS[7], now, job)
redis.call('ZADD', KEYS[8], now, job)
return 1
