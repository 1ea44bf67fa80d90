-- settle: capture min(cost, hold + balance), return the rest, record, count tokens, audit; idempotent. What
-- the money could not cover (the hold expired and was spent meanwhile, or the cost passed hold + balance)
-- is recorded as 'shortfall' on the record and the audit entry: never free in silence.
-- KEYS: key hash, holds hash, generation record, audit stream, rate-limit prefix, open streams (as in admit.lua)
-- ARGV: generation id, cost, tokens, record ttl s, the record as a JSON object of strings, key id. One JSON
--       argument rather than ~20 field/value arguments (packing each argument was the largest cost on the
--       client side); the audit entry is the record's fields plus the ledger's own, which win a clash
--       (generation_id, key_id, tokens, charged), as store.memory.audit_entry builds it.
-- Returns {status, charged, balance after}: status "settled", "replay" (the first answer; nothing
-- changed) or "missing" (no such key; nothing changed).
local state = redis.call('HMGET', KEYS[1], 'balance', 'holds_expire')
if not state[1] then  -- every key hash has a balance
  return {'missing', '0', '0'}
end
redis.call('ZREM', KEYS[6], ARGV[1])  -- its stream slot, if it had one
local prior = redis.call('HMGET', KEYS[3], 'charged', 'balance_after')
if prior[1] then
  return {'replay', prior[1], prior[2]}
end
local now = now_ms()
local swept = sweep(KEYS[1], KEYS[2], now, state[2])

local hold = 0
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  hold = tonumber(string.match(held, '^(%d+):'))
  redis.call('HDEL', KEYS[2], ARGV[1])
end
local balance = tonumber(swept or state[1])
local charged = math.max(0, math.min(tonumber(ARGV[2]), hold + balance))
local after = num(redis.call('HINCRBY', KEYS[1], 'balance', num(hold - charged)))
redis.call('HINCRBY', KEYS[1], 'usage', num(charged))

local fields = cjson.decode(ARGV[5])
local record = {'charged', num(charged), 'balance_after', after}
local audit = {'generation_id', ARGV[1], 'key_id', ARGV[6], 'tokens', ARGV[3], 'charged', num(charged)}
local ledger = {generation_id = true, key_id = true, tokens = true, charged = true, shortfall = true}
local shortfall = tonumber(ARGV[2]) - charged
if shortfall > 0 then
  record[#record + 1], record[#record + 2] = 'shortfall', num(shortfall)
  audit[#audit + 1], audit[#audit + 2] = 'shortfall', num(shortfall)
end
for k, v in pairs(fields) do
  if k ~= 'charged' and k ~= 'balance_after' and k ~= 'shortfall' then
    record[#record + 1] = k
    record[#record + 1] = v
  end
  if not ledger[k] then
    audit[#audit + 1] = k
    audit[#audit + 1] = v
  end
end
redis.call('HSET', KEYS[3], unpack(record))
redis.call('EXPIRE', KEYS[3], ARGV[4])

if tonumber(ARGV[3]) > 0 then
  local index = math.floor(now / 60000)
  local window = KEYS[5] .. 'tpm:' .. num(index)
  -- the count stops at MAX_AMOUNT, above any limit admit is given: counts of up to MAX_AMOUNT each would
  -- otherwise take INCRBY past 2^63 - 1 after 1,025 of them, an error that failed the settlement
  if redis.call('INCRBY', window, ARGV[3]) > MAX_AMOUNT then
    redis.call('SET', window, num(MAX_AMOUNT))
  end
  redis.call('PEXPIREAT', window, num((index + 1) * 60000))
end

redis.call('XADD', KEYS[4], 'MAXLEN', '~', '1000000', '*', unpack(audit))
return {'settled', num(charged), after}
