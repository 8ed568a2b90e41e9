-- KEYS[1]: era5:contact. ARGV: worker, ttl_ms. A worker's heartbeat reached the store: its
-- contact (see prelude.lua) is noted in store time.
contact(KEYS[1], ARGV[1], now_ms(), tonumber(ARGV[2]))
return 1
