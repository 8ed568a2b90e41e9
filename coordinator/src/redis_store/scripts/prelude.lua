-- Shared by every job script. KEYS: the job's 1 meta, 2 state, 3 pending, 4 leased, 5 items,
-- 6 order; then the indexes 7 jobs, 8 active, 9 standing (era5:jobs, era5:active,
-- era5:standing), 10 contact (era5:contact: when each worker reached the store), 11 held
-- (era5:held: every live grant as "<worker>|<job>|<item>", scored by its expiry) and 12 held
-- count (era5:held_count: worker -> how many of those are its). Item fields live in the state
-- hash as "<item>|<field>", so every key a script touches is declared. A script is one atomic step: the job's state, its counters and
-- the indexes it belongs to change together, and a read sees them at one moment.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The Redis process's run id (new at every start) and uptime in seconds, from INFO server.
local function server()
  local info = redis.call('INFO', 'server')
  return string.match(info, 'run_id:(%w+)'), tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
end
-- The job's id, from its meta key's name (era5:{JOB}:meta, built by keys.rs).
local function job_id() return string.sub(KEYS[1], 7, -7) end
local function field(item, name) return item .. '|' .. name end
local function get(item, name) return redis.call('HGET', KEYS[2], field(item, name)) end
local function set(item, ...)
  local args = {...}
  local flat = {}
  for i = 1, #args, 2 do
    flat[#flat + 1] = field(item, args[i])
    flat[#flat + 1] = args[i + 1]
  end
  redis.call('HSET', KEYS[2], unpack(flat))
end
local function cancelled() return redis.call('HGET', KEYS[1], 'cancelled') == '1' end
-- The grant (lease id, epoch) is the item's current one and has not expired.
local function live(item, lease_id, epoch, now)
  return get(item, 'state') == 'leased' and get(item, 'lease') == lease_id
    and tonumber(get(item, 'epoch')) == epoch and tonumber(get(item, 'exp')) > now
end
-- Whether the item's current grant went to `worker`: only its holder may act on a grant.
local function held_by(item, worker)
  return get(item, 'holder') == worker
end
-- A worker reached the store at `now`: its streak of contact goes on if its previous contact
-- is at most half a TTL old, and starts again otherwise. `key` is era5:contact.
local function contact(key, worker, now, ttl)
  local last = tonumber(redis.call('HGET', key, worker .. '|last') or '')
  if not last or now - last > ttl / 2 then
    redis.call('HSET', key, worker .. '|since', now)
  end
  redis.call('HSET', key, worker .. '|last', now)
end
-- Whether an expiry at `exp` counts against its item: the holder was in unbroken contact with
-- the store from before its renewal was due (two thirds of a TTL before the expiry) until
-- after it, so it could have renewed and did not; and the expiry is reaped within a TTL (the
-- store and a reaper were up). Outages of Redis or of the coordinators, restarts and clock
-- steps break the contact or delay the reaping, so they never make an item poison.
local function counts(holder, exp, now, ttl)
  if holder == nil or holder == '' or now - exp > ttl then return false end
  local due = exp - math.floor(2 * ttl / 3)
  local since = tonumber(redis.call('HGET', KEYS[10], holder .. '|since') or '')
  local last = tonumber(redis.call('HGET', KEYS[10], holder .. '|last') or '')
  return since ~= nil and last ~= nil and since <= due and last >= due
end
-- The lease cap's ledger. A grant counts against its holder from its grant until it is settled
-- (complete, fail, release), lost with its cancelled job, or expires; its member's score is
-- its expiry, so expiry needs no script of its job: `held` drops every expired member first.
-- Worker names have no '|' (the service checks them), so a member's worker is its first field.
local function held_member(item, worker) return worker .. '|' .. job_id() .. '|' .. item end
local function held_drop(member)
  if redis.call('ZREM', KEYS[11], member) == 1 then
    local worker = string.match(member, '^([^|]*)|')
    if redis.call('HINCRBY', KEYS[12], worker, -1) <= 0 then
      redis.call('HDEL', KEYS[12], worker)
    end
  end
end
-- The item's grant to `worker` counts until `expires` (a grant, or a renewal: a grant made
-- before the ledger existed, by an older coordinator, starts counting at its first renewal).
local function hold(item, worker, expires)
  if redis.call('ZADD', KEYS[11], expires, held_member(item, worker)) == 1 then
    redis.call('HINCRBY', KEYS[12], worker, 1)
  end
end
-- The item's grant to `worker` no longer counts (settled, lost or reaped).
local function unhold(item, worker)
  if worker and worker ~= '' then held_drop(held_member(item, worker)) end
end
-- How many live grants `worker` holds, over every job, once the expired ones are dropped
-- (whoever held them: an expiry stops counting at once, reaped or not).
local function held(worker, now)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now)) do
    held_drop(member)
  end
  return tonumber(redis.call('HGET', KEYS[12], worker) or '0')
end
-- Expired grants go back to pending, or to dead past max_expiries (a poison item); only the
-- expiries that count (above) are counted.
local function reap(now, max_expiries, ttl)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local item = expired[i]
    local exp = tonumber(expired[i + 1])
    redis.call('ZREM', KEYS[4], item)
    local holder = get(item, 'holder')
    unhold(item, holder)
    local counted = counts(holder, exp, now, ttl)
    local expiries = tonumber(get(item, 'expiries') or '0')
    if counted then
      expiries = redis.call('HINCRBY', KEYS[2], field(item, 'expiries'), 1)
    end
    set(item, 'holder', '')
    if counted and expiries > max_expiries then
      set(item, 'state', 'dead', 'error', 'lease expired ' .. expiries .. ' times (poison item)')
      redis.call('HINCRBY', KEYS[1], 'dead', 1)
      redis.call('HSET', KEYS[1], 'ended', now)
    else
      set(item, 'state', 'pending')
      redis.call('ZADD', KEYS[3], now, item)
    end
  end
  return #expired / 2
end
-- Takes the job out of the active set once nothing of it is pending or leased (all done or
-- dead) or it is cancelled, so acquire walks only jobs with work. In the script that saw it
-- empty: a retry or an extension that brings work back comes before or after, not between.
local function retire_if_final()
  if cancelled() or (redis.call('ZCARD', KEYS[3]) == 0 and redis.call('ZCARD', KEYS[4]) == 0) then
    redis.call('ZREM', KEYS[8], job_id())
  end
end
-- Puts the job (back) in the active set, scored by its creation time like era5:jobs, unless it
-- is cancelled.
local function activate()
  if cancelled() then return end
  local created = redis.call('ZSCORE', KEYS[7], job_id()) or redis.call('HGET', KEYS[1], 'created') or 0
  redis.call('ZADD', KEYS[8], created, job_id())
end
local function refusal(item)
  if get(item, 'state') == 'done' then return 'done' end
  return 'lost'
end
