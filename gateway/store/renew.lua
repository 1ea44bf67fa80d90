-- renew: a request still in flight keeps its hold and its stream slot for another TTL from now (its
-- process is alive; only a dead process's hold is meant to return by itself).
-- KEYS: holds hash, open streams (as in admit.lua). ARGV: generation id, hold ttl ms.
-- Only what is still open is moved, and only later: a hold past its expiry is the balance's already (an
-- admission may have spent it), a settled request has neither. 'holds_expire' stays as it is: a bound at
-- or before the earliest expiry stays one when an expiry moves later.
-- Returns 1 when the request still held money or a slot (now until now + ttl), 0 when it held neither.
local now = now_ms()
local expires = now + tonumber(ARGV[2])
local open = 0
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local amount, ends = string.match(held, '^(%d+):(%d+)$')
  if tonumber(ends) > now then
    open = 1
    if expires > tonumber(ends) then
      redis.call('HSET', KEYS[1], ARGV[1], amount .. ':' .. num(expires))
    end
  end
end
local slot = redis.call('ZSCORE', KEYS[2], ARGV[1])
if slot and tonumber(slot) > now then
  open = 1
  if expires > tonumber(slot) then
    redis.call('ZADD', KEYS[2], 'XX', num(expires), ARGV[1])
    local latest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    redis.call('PEXPIREAT', KEYS[2], num(tonumber(latest[2])))
  end
end
return open
