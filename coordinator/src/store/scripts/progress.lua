-- ARGV: item, lease id, epoch, bytes done. Latest value wins; stale grants are ignored.
if cancelled() then return 0 end
local item = ARGV[1]
if live(item, ARGV[2], tonumber(ARGV[3]), now_ms()) then
  set(item, 'bytes_done', ARGV[4])
  return 1
end
return 0
