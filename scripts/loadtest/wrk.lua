-- wrk script for scripts/loadtest.sh: every target (direct, this proxy, Envoy) gets the same
-- requests from the same code, so wrk's own per-request cost is the same for all of them.
--
--   LOADTEST_MARKETPLACES="US DE JP"  x-amz-marketplace values, cycled request by request
--                                      (one value: every request the same)
--   LOADTEST_METHOD=POST LOADTEST_BODY_BYTES=1048576   optional request body
--
-- The requests are formatted once per wrk thread in init(); request() only picks the next.
-- After the run, done() prints one machine-readable line (latencies in microseconds).
local requests, n, i = {}, 0, 0

init = function(args)
  local body
  local size = tonumber(os.getenv("LOADTEST_BODY_BYTES") or "0")
  if size > 0 then body = string.rep("a", size) end
  local method = os.getenv("LOADTEST_METHOD")
  if method == nil or method == "" then method = wrk.method end
  local marketplaces = {}
  for m in string.gmatch(os.getenv("LOADTEST_MARKETPLACES") or "", "%S+") do
    marketplaces[#marketplaces + 1] = m
  end
  if #marketplaces == 0 then marketplaces[1] = false end
  for _, m in ipairs(marketplaces) do
    local headers = {}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    if m then headers["x-amz-marketplace"] = m end
    n = n + 1
    requests[n] = wrk.format(method, nil, headers, body)
  end
end

request = function()
  i = i % n + 1
  return requests[i]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LOADTEST_WRK requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d"
      .. " err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
