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
local counter = 0
local prefix = "m"
local next_thread = 0

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_common.lua")
completed, sealed = 0, 0

local common_setup = setup
function setup(thread)
   next_thread = next_thread + 1
   thread:set("id", next_thread)
   common_setup(thread)
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
   count(status, body)
   if body ~= nil and string.find(body, "TASK_STATE_COMPLETED", 1, true) then
      completed = completed + 1
   end
   if body ~= nil and string.find(body, '"id"%s*:%s*"t1%.') then
      sealed = sealed + 1
   end
end

function done(summary, latency, requests)
   report(summary, latency, { "completed", "sealed" })
end
