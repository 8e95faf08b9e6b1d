-- What bench/'s wrk scripts share: response counters, and the one BENCH_JSON line done() prints.
--
-- A script loads it first thing (wrk runs each script in one Lua state per thread, plus its own):
--   dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_common.lua")
-- then calls count(status, body) from response(), and report(summary, latency, names) from done(),
-- `names` listing its own extra counters (globals it keeps, per thread) after the common ones.

-- Per-thread counters (each wrk thread has its own Lua state).
status_2xx, status_4xx, status_5xx, status_other = 0, 0, 0, 0
rpc_result, rpc_error, rpc_none = 0, 0, 0

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

--- Count one answer by HTTP status class and JSON-RPC outcome; true when it is a JSON-RPC error.
--- Plain finds, no JSON parser: `"isError"` does not match `"error"`.
function count(status, body)
   if status >= 200 and status < 300 then
      status_2xx = status_2xx + 1
   elseif status >= 400 and status < 500 then
      status_4xx = status_4xx + 1
   elseif status >= 500 and status < 600 then
      status_5xx = status_5xx + 1
   else
      status_other = status_other + 1
   end
   if body ~= nil and string.find(body, '"error"%s*:') then
      rpc_error = rpc_error + 1
      return true
   elseif body ~= nil and string.find(body, '"result"%s*:') then
      rpc_result = rpc_result + 1
   else
      rpc_none = rpc_none + 1
   end
   return false
end

--- A counter summed over the threads.
function sum(name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (thread:get(name) or 0)
   end
   return total
end

--- The threads (for scripts that read other per-thread values, such as a first error seen).
function all_threads()
   return threads
end

--- Print `BENCH_JSON {...}`: wrk's summary, the latency percentiles (microseconds) and every counter.
function report(summary, latency, extra)
   local names = { "status_2xx", "status_4xx", "status_5xx", "status_other", "rpc_result", "rpc_error", "rpc_none" }
   for _, name in ipairs(extra or {}) do table.insert(names, name) end
   local parts = {}
   for _, name in ipairs(names) do
      table.insert(parts, string.format('"%s":%d', name, sum(name)))
   end
   local e = summary.errors
   table.insert(parts, string.format('"requests":%d,"duration_us":%d,"bytes":%d', summary.requests, summary.duration,
      summary.bytes))
   table.insert(parts, string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.status, e.timeout))
   table.insert(parts, string.format(
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99_9":%d}',
      latency.min, latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
   io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
