"""Virtual MCP server benchmark: a tools/call through a virtual server against the same call through the
member's plain route and directly; tools/list over three members, cold and cached.

    .venv/bin/python bench/vmcp.py               # or: make bench-vmcp (about 2 minutes)
    .venv/bin/python bench/vmcp.py --seconds 2   # a quick sanity run

Everything on 127.0.0.1 and free ports, started here and stopped by PID: three demo MCP servers
(`python -m xds_server.demo.mcp_server --json-response`): alpha (both revisions), beta (2025-11-25
only), gamma (2026-07-28 only); `agentxds serve` (control plane + policy service, one process) and
one Envoy it configures (concurrency 1, log level error). Policies: alpha is an MCPBackend on its
own route /mcp/alpha; the virtual servers `tools` (lists cached 60 s) and `cold` (lists never
cached) federate alpha, beta and gamma, naming `always` (alpha__whoami, ...). `triage` (trusted
header x-agent-id) is granted whoami on /mcp/alpha and `*` on both virtual servers.

1. wrk (bench/mcp_call.lua, 2026-07-28 stateless tools/call of whoami) against alpha directly,
   /mcp/alpha (`whoami`) and /vmcp/tools (`alpha__whoami`: routed by Envoy itself, the Lua filter
   restoring the name), at 1 and 16 connections, --seconds each after a warm-up; CPU per call of
   each process. Every answer must be 200 and `server alpha`.
2. tools/list (2026-07-28) through the gateway, one request at a time from this process
   (http.client, keep-alive), --lists requests each on `cold` (every request reads the three
   members: discover or a new legacy session, then their four lists) and on `tools` (cached):
   p50/p99 and the count of tools (must be 18).

Results: a table on stdout and bench/results/vmcp.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import (  # bench/run.py
    HOST,
    STARTUP_TIMEOUT_S,
    cpu_seconds,
    machine_info,
    start_control_plane,
    start_demo_server,
    start_envoy,
    wrk_run,
)

from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port, wait_for_port
from xds_server.runtime.processes import stop_process

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "mcp_call.lua"
DEFAULT_OUT = BENCH / "results" / "vmcp.json"
GATEWAY = "vmcpbench"
CALLER = "triage"
LEVELS = (1, 16)
MEMBERS = {"alpha": (), "beta": ("--only-revision", "2025-11-25"), "gamma": ("--only-revision", "2026-07-28")}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def start_member(workdir: Path, name: str, extra: tuple[str, ...]) -> tuple[subprocess.Popen[bytes], str]:
    """A member: the demo server named `name`, its requests logged to `<name>.jsonl`."""
    return start_demo_server(workdir, name, ("--request-log", str(workdir / f"{name}.jsonl"), *extra))


def write_policies(dest: Path, *, listen_port: int, policy_port: int, http_port: int, ports: dict[str, int]) -> None:
    dest.mkdir(parents=True)
    backends = "".join(
        f"""---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: {name}}}
spec: {{endpoints: [{{host: {HOST}, port: {port}}}], timeouts: {{request: 0s}}}}
"""
        for name, port in ports.items()
    )
    virtual = "".join(
        f"""---
apiVersion: agentxds.dev/v1
kind: VirtualMCPServer
metadata: {{name: {name}}}
spec:
  backends:
    - {{backend: alpha}}
    - {{backend: beta, revisions: ["2025-11-25"]}}
    - {{backend: gamma, revisions: ["2026-07-28"]}}
  fanOut: {{timeout: 2s, cache: {cache}}}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: {name}}}
spec: {{backend: {name}, rules: [{{agents: [{CALLER}], tools: ["*"]}}]}}
"""
        for name, cache in (("tools", "60s"), ("cold", "0s"))
    )
    (dest / "all.yaml").write_text(f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: {HOST}, port: {listen_port}}}
  identity: {{trustedHeader: x-agent-id}}
  policyService: {{host: {HOST}, port: {policy_port}, extAuthz: http, extAuthzHttpPort: {http_port}}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {{name: {CALLER}}}
spec: {{identity: {{header: {CALLER}}}}}
{backends}---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: alpha}}
spec: {{backend: alpha, rules: [{{agents: [{CALLER}], tools: [whoami]}}]}}
{virtual}""")


def rpc(
    conn: http.client.HTTPConnection, path: str, method: str, params: dict[str, Any], name: str = ""
) -> dict[str, Any]:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "x-agent-id": CALLER, "mcp-protocol-version": "2026-07-28", "mcp-method": method}  # fmt: skip
    if name:
        headers["mcp-name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": MODERN_META}}
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    response = conn.getresponse()
    answer = json.loads(response.read())
    if response.status != 200 or "result" not in answer:
        raise RuntimeError(f"{method} on {path}: {response.status} {answer}")
    return dict(answer["result"])


def check(listen_port: int, direct_port: int) -> None:
    for port, path, tool in ((direct_port, "/mcp", "whoami"), (listen_port, "/mcp/alpha", "whoami"),
                             (listen_port, "/vmcp/tools", "alpha__whoami")):  # fmt: skip
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        text = rpc(conn, path, "tools/call", {"name": tool, "arguments": {}}, tool)["content"][0]["text"]
        conn.close()
        if text != "server alpha":
            raise RuntimeError(f"{path} {tool}: expected 'server alpha', got {text!r}")
    print("check: whoami answers 'server alpha' directly, on /mcp/alpha and as alpha__whoami on /vmcp/tools",
          flush=True)  # fmt: skip


def lists(listen_port: int, path: str, count: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, listen_port, timeout=30)
    times, tools = [], 0
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            tools = len(rpc(conn, path, "tools/list", {})["tools"])
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        conn.close()
    if tools != 18:
        raise RuntimeError(f"tools/list on {path} listed {tools} tools, expected 18")
    times.sort()
    return {"requests": count, "tools": tools, "p50_ms": statistics.median(times),
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))], "max_ms": times[-1]}  # fmt: skip


def run_wrk(wrk: str, url: str, tool: str, *, connections: int, seconds: int) -> dict[str, Any]:
    data = wrk_run(wrk, url, LUA, [tool, CALLER], connections=connections, seconds=seconds)[0]
    n = data["requests"]
    data["problems"] = [] if n and data["status_2xx"] == data["rpc_result"] == n else [
        f"expected {n} x 200 + result, got 2xx={data['status_2xx']} result={data['rpc_result']} error={data['rpc_error']}"]  # fmt: skip
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds per measured point (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per path (default 3)")
    parser.add_argument("--lists", type=int, default=200, help="tools/list requests per list path (default 200)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default bench/results/vmcp.json)")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench/vmcp.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-vmcp-bench-"))
    members: dict[str, subprocess.Popen[bytes]] = {}
    serve: subprocess.Popen[bytes] | None = None
    envoy: EnvoyProcess | None = None
    failed = False
    try:
        urls = {}
        for name, extra in MEMBERS.items():
            members[name], urls[name] = start_member(workdir, name, extra)
        ports = {name: int(url.rsplit(":", 1)[1].split("/")[0]) for name, url in urls.items()}
        listen_port, policy_port, http_port = free_port(HOST), free_port(HOST), free_port(HOST)
        policy_dir = workdir / "policies"
        write_policies(policy_dir, listen_port=listen_port, policy_port=policy_port, http_port=http_port, ports=ports)
        serve, xds_port = start_control_plane(policy_dir, workdir, policy_port=policy_port, authz_http_port=http_port,
                                              name="serve")  # fmt: skip
        envoy = start_envoy(workdir / "envoy", node_id="vmcp-bench", gateway=GATEWAY, xds_port=xds_port,
                            listen_port=listen_port)  # fmt: skip
        wait_for_port(HOST, http_port, timeout=STARTUP_TIMEOUT_S)
        check(listen_port, ports["alpha"])
        info = machine_info(wrk)
        print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}; envoy {info['envoy']}; {info['wrk']}; logs {workdir}",
              flush=True)  # fmt: skip

        list_results = {"cold": lists(listen_port, "/vmcp/cold", args.lists),
                        "cached": lists(listen_port, "/vmcp/tools", args.lists)}  # fmt: skip
        for kind, r in list_results.items():
            print(f"tools/list over 3 members, {kind:<6}: p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                  f"(max {r['max_ms']:.1f} ms, {r['tools']} tools, {r['requests']} requests)", flush=True)  # fmt: skip

        paths = {"direct": (urls["alpha"], "whoami"), "plain": (f"http://{HOST}:{listen_port}/mcp/alpha", "whoami"),
                 "virtual": (f"http://{HOST}:{listen_port}/vmcp/tools", "alpha__whoami")}  # fmt: skip
        for url, tool in paths.values():
            run_wrk(wrk, url, tool, connections=max(LEVELS), seconds=args.warmup)
        points: dict[int, dict[str, dict[str, Any]]] = {}
        for c in LEVELS:
            points[c] = {}
            for path, (url, tool) in paths.items():
                pids = {"alpha": members["alpha"].pid}
                if path != "direct":
                    pids |= {"envoy": envoy.pid, "agentxds_serve": serve.pid}
                before = {k: cpu_seconds(v) for k, v in pids.items()}
                r = run_wrk(wrk, url, tool, connections=c, seconds=args.seconds)
                r["cpu_us_per_call"] = {k: (cpu_seconds(v) - before[k]) * 1e6 / max(1, r["requests"])
                                        for k, v in pids.items()}  # fmt: skip
                failed = failed or bool(r["problems"])
                points[c][path] = r
                lat = r["latency_us"]
                print(f"c={c:<3} {path:<8} {r['rps']:7.0f} req/s  p50 {lat['p50'] / 1000:.2f} ms  "
                      f"p99 {lat['p99'] / 1000:.2f} ms  cpu/call "
                      + ", ".join(f"{k} {v:.0f} us" for k, v in r["cpu_us_per_call"].items())
                      + (f"  PROBLEMS: {'; '.join(r['problems'])}" if r["problems"] else ""), flush=True)  # fmt: skip
        summary = {
            "virtual_vs_plain_throughput_c16": points[16]["virtual"]["rps"] / points[16]["plain"]["rps"],
            "virtual_vs_plain_throughput_c1": points[1]["virtual"]["rps"] / points[1]["plain"]["rps"],
            "virtual_added_p50_ms_c1": (
                points[1]["virtual"]["latency_us"]["p50"] - points[1]["plain"]["latency_us"]["p50"]
            )
            / 1000,  # fmt: skip
            "plain_vs_direct_throughput_c16": points[16]["plain"]["rps"] / points[16]["direct"]["rps"],
            "lists": list_results,
        }
        print(f"virtual / plain route: throughput {summary['virtual_vs_plain_throughput_c16']:.2f}x at 16 connections, "
              f"{summary['virtual_vs_plain_throughput_c1']:.2f}x at 1; added p50 "
              f"{summary['virtual_added_p50_ms_c1'] * 1000:+.0f} us at 1 connection", flush=True)  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
                                        "seconds": args.seconds, "summary": summary,
                                        "points": {str(c): {p: {k: v for k, v in r.items() if k != "wrk_output"}
                                                            for p, r in ps.items()} for c, ps in points.items()}},
                                       indent=2))  # fmt: skip
        print(f"results: {args.out}")
    finally:
        if envoy is not None:
            envoy.stop()
        if serve is not None:
            stop_process(serve)
        for proc in members.values():
            stop_process(proc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
