-- Shared by the bench scripts: done() prints one machine-readable line so the Python runner
-- never has to parse wrk's human summary (whose units change with magnitude: us/ms/s, k/M).
-- Latencies are microseconds, as wrk reports them.

local PERCENTILES = { 50, 75, 90, 95, 99, 99.9 }

function done(summary, latency, requests)
   local e = summary.errors
   local parts = {}
   for _, p in ipairs(PERCENTILES) do
      parts[#parts + 1] = string.format('"%s":%d', tostring(p), latency:percentile(p))
   end
   io.write(string.format(
      'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,"percentiles":{%s}}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev, table.concat(parts, ",")))
end
