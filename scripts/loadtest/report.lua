-- wrk reporter for scripts/loadtest.sh: prints one machine-readable line after the run.
-- Latencies are in microseconds, as wrk keeps them; the request count is what wrk completed.
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
