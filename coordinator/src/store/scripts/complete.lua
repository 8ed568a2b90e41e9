-- ARGV: item, lease id, epoch. Returns ok (also for a retried call of the same grant), done
-- (completed under another grant) or lost.
if cancelled() then return 'lost' end
local now = now_ms()
local item = ARGV[1]
if get(item, 'state') == 'done' then
  if get(item, 'done_lease') == ARGV[2] and tonumber(get(item, 'done_epoch')) == tonumber(ARGV[3]) then
    return 'ok'
  end
  return 'done'
end
if not live(item, ARGV[2], tonumber(ARGV[3]), now) then return 'lost' end
set(item, 'state', 'done', 'done_lease', ARGV[2], 'done_epoch', ARGV[3])
redis.call('ZREM', KEYS[4], item)
redis.call('HINCRBY', KEYS[1], 'done', 1)
redis.call('HINCRBY', KEYS[1], 'done_bytes', tonumber(get(item, 'bytes') or '0'))
redis.call('HSET', KEYS[1], 'finished', now)
return 'ok'
