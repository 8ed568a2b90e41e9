-- Forgets the job if it is finished (nothing pending or leased, or cancelled) and its last
-- transition (created, finished, ended) is older than ARGV[1] (ms), in the same step as the
-- check: a retry or an extension that brings work back lands before (the job is kept) or
-- after (it finds no job). A standing job that still follows is kept; a job indexed without
-- its meta (a remnant) goes. Returns 1 when the job was forgotten, else 0.
local job = job_id()
if redis.call('ZSCORE', KEYS[9], job) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local final = cancelled() or
    (redis.call('ZCARD', KEYS[3]) == 0 and redis.call('ZCARD', KEYS[4]) == 0)
  if not final then return 0 end
  local last = 0
  for _, name in ipairs({'created', 'finished', 'ended'}) do
    local value = tonumber(redis.call('HGET', KEYS[1], name) or '0') or 0
    if value > last then last = value end
  end
  if last >= tonumber(ARGV[1]) then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[7], job)
redis.call('ZREM', KEYS[8], job)
return 1
