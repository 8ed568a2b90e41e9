-- ARGV: max_expiries. Returns how many expired grants were returned.
if cancelled() then return 0 end
return reap(now_ms(), tonumber(ARGV[1]))
