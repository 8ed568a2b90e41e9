-- A job's status, read at one moment (reads only; ARGV: none). Returns {meta (flat field,
-- value list; empty for an unknown job), pending, leased, the bytes leased items reported
-- done (each at most its item's size), a standing job's next check (ms) or nil}.
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return {meta, 0, 0, 0, false} end
local leased = redis.call('ZRANGE', KEYS[4], 0, -1)
local progress = 0
for _, item in ipairs(leased) do
  local done = tonumber(get(item, 'bytes_done') or '0') or 0
  local size = tonumber(get(item, 'bytes') or '')
  if size and done > size then done = size end
  progress = progress + done
end
return {meta, redis.call('ZCARD', KEYS[3]), #leased, progress,
  redis.call('ZSCORE', KEYS[9], job_id())}
