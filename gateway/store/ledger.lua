-- Shared head of the ledger scripts (admit.lua, settle.lua, topup.lua, renew.lua): store.redis prepends it.
-- Money stays exact: stored amounts are decimal strings changed only by HINCRBY; Lua's doubles only ever
-- hold single amounts below 2^53 (store.memory.MAX_AMOUNT), which they represent exactly.

-- An integral Lua number as exact decimal text (tostring would switch to exponent form).
local function num(n)
  return string.format('%d', n)
end

-- The server's clock in milliseconds: the only clock the ledger and the windows use.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Return the key's expired holds ("amount:expires_ms" per generation id) to its balance, when one may
-- have expired. The key hash keeps 'holds_expire', a time at or before the earliest expiry of its open
-- holds (absent: no hold, or not known), so the holds hash is read only once that time has come, not by
-- every admit and settle: with many requests of one key in flight that read grew with each of them.
-- `bound` is the 'holds_expire' the caller read. Returns the balance after the return (nil when nothing
-- expired) and the new bound (nil: no hold left).
local function sweep(key, holds, now, bound)
  if bound and now < tonumber(bound) then
    return nil, tonumber(bound)
  end
  local all = redis.call('HGETALL', holds)
  local balance, earliest = nil, nil
  for i = 1, #all, 2 do
    local amount, expires = string.match(all[i + 1], '^(%d+):(%d+)$')
    expires = tonumber(expires)
    if expires <= now then
      redis.call('HDEL', holds, all[i])
      balance = redis.call('HINCRBY', key, 'balance', amount)
    elseif not earliest or expires < earliest then
      earliest = expires
    end
  end
  if earliest then
    redis.call('HSET', key, 'holds_expire', num(earliest))
  elseif bound then
    redis.call('HDEL', key, 'holds_expire')
  end
  return balance, earliest
end

-- Keep 'holds_expire' at or before a new hold's expiry (`bound` as sweep returned it).
local function bound_hold(key, bound, expires)
  if not bound or expires < bound then
    redis.call('HSET', key, 'holds_expire', num(expires))
  end
end
