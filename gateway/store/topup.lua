-- topup: add ARGV[1] (may be negative) to balance and credits, after returning expired holds.
-- KEYS: key hash, holds hash. ARGV: amount, the most credits (and so the balance) may reach.
-- Returns {"missing"} (nothing written), {"negative", balance} or {"too_large", balance} (refused,
-- nothing but the sweep written) or {"ok", new balance}.
local state = redis.call('HMGET', KEYS[1], 'balance', 'holds_expire', 'credits')
if not state[1] then  -- every key hash has a balance
  return {'missing'}
end
local balance = tonumber(sweep(KEYS[1], KEYS[2], now_ms(), state[2]) or state[1])
local amount = tonumber(ARGV[1])
if balance + amount < 0 then
  return {'negative', num(balance)}
end
-- past 2^53 Lua's doubles would no longer hold the balance exactly: a grant may not take it there
if amount > 0 and math.max(balance, tonumber(state[3] or '0')) + amount > tonumber(ARGV[2]) then
  return {'too_large', num(balance)}
end
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'credits', ARGV[1])
return {'ok', redis.call('HGET', KEYS[1], 'balance')}
