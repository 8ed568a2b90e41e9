-- KEYS[13]: where this request's grants are recorded. ARGV: max, ttl_ms, max_expiries,
-- worker, the lease cap per worker, '1' to record the grants under KEYS[13], lease ids (max).
-- Returns a flat list: the room the worker has left under its cap after these grants (-1: not
-- looked at, the job is cancelled), then item, lease id, epoch, ... for each grant: at most the
-- cap less what the worker holds live in every job (nothing at its cap). A job with nothing
-- left to grant leaves the active set. While Redis is younger than a TTL and the job's state
-- came through its restart, it returns {'held', ms left} and grants nothing.
if cancelled() then
  retire_if_final()
  return {-1}
end
local now = now_ms()
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
-- A job whose state came through a restart of Redis (created under another run id) may have
-- come back older (an everysec AOF loses up to its last second, a crash what was not yet
-- written): grants made just before may be lost while their holders still work. Nothing of
-- it is granted until a TTL after the start, when every grant it could have lost has expired
-- (the holders' renewals are refused meanwhile, so they stop).
-- Redis counts its uptime in whole seconds of its wall clock, from a start time in whole
-- seconds: it may read a second more than has passed, hence the second added here.
local run_id, uptime = server()
if uptime and (uptime - 1) * 1000 < ttl and redis.call('HGET', KEYS[1], 'run_id') ~= run_id then
  return {'held', ttl - (uptime - 1) * 1000}
end
contact(KEYS[10], ARGV[4], now, ttl)
reap(now, tonumber(ARGV[3]), ttl)
local room = tonumber(ARGV[5]) - held(ARGV[4], now)
if room < max then max = room end
if max <= 0 then
  retire_if_final()
  return {0}
end
local ready = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, max)
local out = {room - #ready}
for i, item in ipairs(ready) do
  local epoch = redis.call('HINCRBY', KEYS[2], field(item, 'epoch'), 1)
  local expires = now + ttl
  set(item, 'state', 'leased', 'lease', ARGV[6 + i], 'holder', ARGV[4], 'exp', expires, 'bytes_done', 0)
  redis.call('ZREM', KEYS[3], item)
  redis.call('ZADD', KEYS[4], expires, item)
  hold(item, ARGV[4], expires)
  out[#out + 1] = item
  out[#out + 1] = ARGV[6 + i]
  out[#out + 1] = epoch
end
-- A request's grants are recorded with them, so that its repeat (its answer was lost)
-- answers them again instead of granting more.
if ARGV[6] == '1' and #ready > 0 then
  for i, item in ipairs(ready) do
    redis.call('LPUSH', KEYS[13], job_id() .. '|' .. item .. '|' .. ARGV[6 + i] .. '|' ..
      get(item, 'epoch'))
  end
  redis.call('PEXPIRE', KEYS[13], 2 * ttl)
end
if #ready == 0 then
  retire_if_final()
elseif redis.call('HEXISTS', KEYS[1], 'started') == 0 then
  redis.call('HSET', KEYS[1], 'started', now)
end
return out
