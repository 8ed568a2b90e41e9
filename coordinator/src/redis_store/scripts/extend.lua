-- Adds a chunk of new items to a job (a standing job's pass) in one step: the items, their
-- pending states, the job's totals and its place in the active set (unless cancelled) change
-- together, so the job is never seen with items its totals do not count, nor retired with
-- them pending. ARGV: 1 items, 2 objects, 3 bytes (the chunk's totals), then four per item in
-- plan order: id, spec (JSON), bytes, brief. Returns {'ok'}, {'unknown'} when there is no such
-- job, or {'order', item, before} when an item does not come after the job's last one (or the
-- chunk's one before it); nothing is written then.

-- Whether a sorts before b byte by byte, as the order index sorts (Lua's `<` follows the
-- server's locale).
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local indexed = redis.call('ZCARD', KEYS[6]) > 0
local last = nil
if indexed then
  last = redis.call('ZRANGE', KEYS[6], -1, -1)[1]
else
  -- A job from before the order index: its greatest id from the items themselves.
  for _, item in ipairs(redis.call('HKEYS', KEYS[5])) do
    if not last or before(last, item) then last = item end
  end
end
for i = 4, #ARGV, 4 do
  local item = ARGV[i]
  if last and not before(last, item) then return {'order', item, last} end
  last = item
end
if not indexed then
  -- Index the earlier items first: a page walks the index once it has any entry.
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
