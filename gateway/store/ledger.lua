-- Shared head of the ledger scripts (admit.lua, settle.lua, topup.lua): store.redis prepends it.
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

-- Return the key's expired holds ("amount:expires_ms" per generation id) to its balance.
local function sweep(key, holds, now)
  local all = redis.call('HGETALL', holds)
  for i = 1, #all, 2 do
    local amount, expires = string.match(all[i + 1], '^(%d+):(%d+)$')
    if tonumber(expires) <= now then
      redis.call('HDEL', holds, all[i])
      redis.call('HINCRBY', key, 'balance', amount)
    end
  end
end
