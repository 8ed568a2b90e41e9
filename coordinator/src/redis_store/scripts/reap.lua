-- ARGV: max_expiries, ttl_ms. Returns how many expired grants were returned. A job with nothing left
-- to grant leaves the active set (so does a cancelled one).
if cancelled() then
  retire_if_final()
  return 0
end
local reaped = reap(now_ms(), tonumber(ARGV[1]), tonumber(ARGV[2]))
retire_if_final()
return reaped
