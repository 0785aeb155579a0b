-- GCRA for up to N permits of several quotas, and the replica heartbeat, in one atomic
-- step with Redis's own clock (replicas' clocks do not matter).
--
-- KEYS[1]: the sorted set of replicas; KEYS[2..]: one key per quota (its theoretical
-- arrival time, TAT, in µs). ARGV[1]: this replica's id, ARGV[2]: the peer window (µs);
-- then four per quota: emission interval (µs), burst, permits wanted, permits given back.
-- Returns {replicas seen, then per quota: permits granted, µs until the next one (0 when
-- all wanted were granted)}.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) * 2)
local out = {redis.call('ZCARD', KEYS[1])}
for i = 2, #KEYS do
  local base = 2 + (i - 2) * 4
  local period = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local want = tonumber(ARGV[base + 3])
  local give_back = tonumber(ARGV[base + 4])
  local tau = period * burst
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if give_back > 0 then
    tat = math.max(now, tat - give_back * period)
  end
  local granted, wait = 0, 0
  if want > 0 then
    granted = math.floor((now + tau - tat) / period + 1e-9)
    if granted > want then granted = want end
    if granted < 0 then granted = 0 end
    tat = tat + granted * period
    if granted < want then wait = math.ceil(tat + period - tau - now) end
    if wait < 1 and granted < want then wait = 1 end
  end
  if want > 0 or give_back > 0 then
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  out[#out + 1] = granted
  out[#out + 1] = wait
end
return out
