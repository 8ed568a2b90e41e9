-- ARGV: item, lease id, epoch, worker. Returns ok (also for a retried call of the same grant),
-- done (completed under another grant), lost, or denied (another worker's grant).
if cancelled() then return 'lost' end
local now = now_ms()
local item = ARGV[1]
if get(item, 'state') == 'done' then
  if get(item, 'done_lease') == ARGV[2] and tonumber(get(item, 'done_epoch')) == tonumber(ARGV[3]) then
    if not held_by(item, ARGV[4]) then return 'denied' end
    return 'ok'
  end
  return 'done'
end
if not live(item, ARGV[2], tonumber(ARGV[3]), now) then return 'lost' end
if not held_by(item, ARGV[4]) then return 'denied' end
set(item, 'state', 'done', 'done_lease', ARGV[2], 'done_epoch', ARGV[3])
redis.call('ZREM', KEYS[4], item)
unhold(item, ARGV[4])
redis.call('HINCRBY', KEYS[1], 'done', 1)
redis.call('HINCRBY', KEYS[1], 'done_bytes', tonumber(get(item, 'bytes') or '0'))
redis.call('HSET', KEYS[1], 'finished', now)
return 'ok'
