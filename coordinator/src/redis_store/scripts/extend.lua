-- Adds a chunk of new items to a job (a standing job's pass) in one step: the items, their
-- pending states, the job's totals and its place in the active set (unless cancelled) change
-- together, so the job is never seen with items its totals do not count, nor retired with
-- them pending. ARGV: 1 items, 2 objects, 3 bytes (the chunk's totals), then four per item:
-- id, spec (JSON), bytes, brief. Returns {'ok'}, {'unknown'} when there is no such job, or
-- {'exists', item} when the job holds one of the ids already; nothing is written then.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
for i = 4, #ARGV, 4 do
  if redis.call('HEXISTS', KEYS[5], ARGV[i]) == 1 then return {'exists', ARGV[i]} end
end
if redis.call('ZCARD', KEYS[6]) == 0 then
  -- A job from before the order index: index its items first, since a page walks the index
  -- as soon as it has an entry.
  for _, item in ipairs(redis.call('HKEYS', KEYS[5])) do
    redis.call('ZADD', KEYS[6], 0, item)
  end
end
for i = 4, #ARGV, 4 do
  local item = ARGV[i]
  redis.call('HSET', KEYS[5], item, ARGV[i + 1])
  set(item, 'state', 'pending', 'epoch', 0, 'bytes', ARGV[i + 2], 'brief', ARGV[i + 3])
  redis.call('ZADD', KEYS[3], 0, item)
  redis.call('ZADD', KEYS[6], 0, item)
end
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'items', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'objects_total', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'bytes_total', ARGV[3])
  activate()
end
return {'ok'}
