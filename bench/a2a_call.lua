-- wrk script: one A2A 1.0 `SendMessage` per request (JSON-RPC POST, `A2A-Version: 1.0`).
--
--   wrk -t1 -c16 -d10s --latency -s bench/a2a_call.lua URL -- [TEXT [HEADER]]
--
-- TEXT (default `hi`) is the message's text; HEADER is one more header,
-- `name: value` (the caller's identity for the gateway, e.g. `x-agent-id: triage`).
-- The JSON-RPC id and the messageId count up per request (per wrk thread).
-- Every response is classified (HTTP status class; JSON-RPC `result` or
-- `error`; a completed task; task ids sealed by the gateway, `"id":"t1.`) and
-- done() prints one line
--   BENCH_JSON {...}
-- with wrk's summary, the latency percentiles (microseconds) and these counts.

local text = "hi"
local threads = {}
local counter = 0
local prefix = "m"

status_2xx, status_4xx, status_5xx, status_other = 0, 0, 0, 0
rpc_result, rpc_error, rpc_none, completed, sealed = 0, 0, 0, 0, 0

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   if args[1] ~= nil and args[1] ~= "" then text = args[1] end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["A2A-Version"] = "1.0"
   if args[2] ~= nil and args[2] ~= "" then
      local name, value = string.match(args[2], "^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
   prefix = "m" .. tostring(id or 1) .. "-"
end

function request()
   counter = counter + 1
   local body = '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"SendMessage","params":{"message":' ..
      '{"role":"ROLE_USER","messageId":"' .. prefix .. counter .. '","parts":[{"text":"' .. text .. '"}]}}}'
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
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
   elseif body ~= nil and string.find(body, '"result"%s*:') then
      rpc_result = rpc_result + 1
   else
      rpc_none = rpc_none + 1
   end
   if body ~= nil and string.find(body, "TASK_STATE_COMPLETED", 1, true) then
      completed = completed + 1
   end
   if body ~= nil and string.find(body, '"id"%s*:%s*"t1%.') then
      sealed = sealed + 1
   end
end

local function sum(name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (thread:get(name) or 0)
   end
   return total
end

function done(summary, latency, requests)
   local names = { "status_2xx", "status_4xx", "status_5xx", "status_other", "rpc_result", "rpc_error", "rpc_none",
      "completed", "sealed" }
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
