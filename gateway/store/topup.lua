-- topup: add ARGV[1] (may be negative) to balance and credits, after returning expired holds.
-- KEYS: key hash, holds hash. ARGV: amount.
-- Returns {"missing"} (nothing written), {"negative", balance} (refused, nothing but the sweep written)
-- or {"ok", new balance}.
local state = redis.call('HMGET', KEYS[1], 'balance', 'holds_expire')
if not state[1] then  -- every key hash has a balance
  return {'missing'}
end
local balance = tonumber(sweep(KEYS[1], KEYS[2], now_ms(), state[2]) or state[1])
if balance + tonumber(ARGV[1]) < 0 then
  return {'negative', num(balance)}
end
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'credits', ARGV[1])
return {'ok', redis.call('HGET', KEYS[1], 'balance')}
