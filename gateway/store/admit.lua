-- admit: missing, disabled, rate limits, money, in that order; only a full pass counts and holds.
-- KEYS: key hash, holds hash, rate-limit prefix "{p}rl:{<key id>}:<model id>:" (windows append
--       "<rpm|rpd|tpm>:<window index>"; same hash tag, so the same Cluster slot)
--       KEYS[4]: the key's open streams (sorted set: generation id -> expiry ms)
-- ARGV: generation id, hold, hold ttl ms, rpm, rpd, tpm ("" = unlimited), open streams cap ("" = not a
--       stream, or no cap): a stream is refused while that many are open, else counted open until settle
-- Returns {outcome, balance, now ms, rpm used, rpd used, tpm used}; used counts include this request
-- when it was admitted.
local state = redis.call('HMGET', KEYS[1], 'disabled', 'balance', 'holds_expire')
if not state[2] then  -- every key hash has a balance
  return {'missing', '0', '0', 0, 0, 0}
end
local now = now_ms()
local swept, bound = sweep(KEYS[1], KEYS[2], now, state[3])
local balance = tonumber(swept or state[2])
if state[1] == '1' then
  return {'disabled', num(balance), num(now), 0, 0, 0}
end

local kinds = {'rpm', 'rpd', 'tpm'}
local sizes = {60000, 86400000, 60000}
local used = {0, 0, 0}
local windows = {}
local limited = false
for i = 1, 3 do
  local limit = ARGV[3 + i]
  if limit ~= '' then
    windows[i] = KEYS[3] .. kinds[i] .. ':' .. num(math.floor(now / sizes[i]))
    used[i] = tonumber(redis.call('GET', windows[i]) or '0')
    if used[i] >= tonumber(limit) then
      limited = true
    end
  end
end

local function answer(outcome)
  return {outcome, num(balance), num(now), used[1], used[2], used[3]}
end
if limited then
  return answer('rate_limited')
end
if ARGV[7] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)  -- streams of dead processes
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then
    return answer('streams')
  end
end
local hold = tonumber(ARGV[2])
if hold > balance then
  return answer('insufficient')
end

for i = 1, 2 do  -- count the request; tpm is counted by settle
  if windows[i] then
    used[i] = redis.call('INCR', windows[i])
    if used[i] == 1 then
      redis.call('PEXPIREAT', windows[i], num((math.floor(now / sizes[i]) + 1) * sizes[i]))
    end
  end
end
if hold > 0 then  -- a second admit of one generation id adds to its hold
  local held = redis.call('HGET', KEYS[2], ARGV[1])
  local amount = hold
  if held then
    amount = amount + tonumber(string.match(held, '^(%d+):'))
  end
  local expires = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], num(amount) .. ':' .. num(expires))
  bound_hold(KEYS[1], bound, expires)
  balance = redis.call('HINCRBY', KEYS[1], 'balance', '-' .. ARGV[2])
end
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[1])
  -- the set lives as long as its latest slot (not this one's TTL: an earlier stream may have a longer one)
  local latest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[4], num(tonumber(latest[2])))
end
return answer('ok')
