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

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_common.lua")
first_error = ""  -- the first answer that was not a result, for the report

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
   if count(status, body) and first_error == "" then first_error = string.sub(body, 1, 400) end
end

function done(summary, latency, requests)
   for _, thread in ipairs(all_threads()) do
      local seen = thread:get("first_error")
      if seen ~= nil and seen ~= "" then io.stderr:write("FIRST_ERROR " .. seen .. "\n") break end
   end
   report(summary, latency)
end
