-- ARGV: item, lease id, epoch, worker, bytes done. Latest value wins; stale grants and other
-- workers' grants are ignored.
if cancelled() then return 0 end
local item = ARGV[1]
if live(item, ARGV[2], tonumber(ARGV[3]), now_ms()) and held_by(item, ARGV[4]) then
  set(item, 'bytes_done', ARGV[5])
  return 1
end
return 0
