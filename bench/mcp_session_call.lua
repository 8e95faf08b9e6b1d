-- wrk script: `tools/call whoami` inside legacy (2025-11-25) sessions that already exist.
--
--   wrk -t1 -c8 -d10s --latency -s bench/mcp_session_call.lua URL -- SESSION_IDS [AGENT]
--
-- SESSION_IDS: the sessions' Mcp-Session-Id values (as the gateway handed them out),
-- comma-separated; each request takes the next one, so every session carries calls.
-- AGENT is the `x-agent-id` header (default triage). done() prints one line
--   BENCH_JSON {...}
-- with wrk's summary, the latency percentiles (microseconds), the status classes and how many
-- answers carried a JSON-RPC result or error (see bench/mcp_call.lua).

local sessions = {}
local agent = "triage"
local next_session = 1
local threads = {}

status_2xx, status_4xx, status_5xx, status_other = 0, 0, 0, 0
rpc_result, rpc_error, rpc_none = 0, 0, 0
first_error = ""  -- the first answer that was not a result, for the report

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   for id in string.gmatch(args[1] or "", "[^,]+") do table.insert(sessions, id) end
   if args[2] ~= nil and args[2] ~= "" then agent = args[2] end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Accept"] = "application/json, text/event-stream"
   wrk.headers["x-agent-id"] = agent
   wrk.headers["mcp-protocol-version"] = "2025-11-25"
   wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
end

function request()
   local id = sessions[next_session]
   next_session = next_session % #sessions + 1
   wrk.headers["mcp-session-id"] = id
   return wrk.format()
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
      if first_error == "" then first_error = string.sub(body, 1, 400) end
   elseif body ~= nil and string.find(body, '"result"%s*:') then
      rpc_result = rpc_result + 1
   else
      rpc_none = rpc_none + 1
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
   local names = { "status_2xx", "status_4xx", "status_5xx", "status_other", "rpc_result", "rpc_error", "rpc_none" }
   local parts = {}
   for _, name in ipairs(names) do
      table.insert(parts, string.format('"%s":%d', name, sum(name)))
   end
   for _, thread in ipairs(threads) do
      local seen = thread:get("first_error")
      if seen ~= nil and seen ~= "" then io.stderr:write("FIRST_ERROR " .. seen .. "\n") break end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},%s}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
