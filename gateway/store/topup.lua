-- topup: add ARGV[1] (may be negative) to balance and credits, after returning expired holds.
-- KEYS: key hash, holds hash. ARGV: amount.
-- Returns {"missing"} (nothing written), {"negative", balance} (refused, nothing but the sweep written)
-- or {"ok", new balance}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
sweep(KEYS[1], KEYS[2], now_ms())
local balance = redis.call('HGET', KEYS[1], 'balance')
if tonumber(balance) + tonumber(ARGV[1]) < 0 then
  return {'negative', balance}
end
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'credits', ARGV[1])
return {'ok', redis.call('HGET', KEYS[1], 'balance')}
