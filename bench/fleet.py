"""Fleet benchmark: legacy sessions through 1 and 2 Envoy replicas, and how fast a moved backend is served.

    .venv/bin/python bench/fleet.py            # or: make bench-fleet (about 1 minute)

Everything on 127.0.0.1 and free ports, started here and stopped by PID:
two demo MCP servers (`python -m xds_server.demo.mcp_server --json-response`,
the backend `github`'s two replicas, and also the two places the backend
`actors` moves between), `agentxds serve` with the endpoints API, and two
Envoys of the gateway (the second on a port of its own, `agentxds up
--replicas` style; concurrency 1 each).

1. Sessions: 32 legacy (2025-11-25) sessions are opened through Envoy A;
   Envoy's session envelope spreads them over the two replicas. Then wrk
   (bench/mcp_session_call.lua) sends `tools/call whoami` in those sessions,
   16 connections for 10 s: all through Envoy A, then 8 through A (the first
   16 sessions) and 8 through B (the other 16) at once, as clients each
   pinned to one Envoy by a load balancer would. Every answer must be a result from the session's
   replica: a gateway refusal or a socket error fails the run; the demo
   server's own occasional 5xx under concurrent calls in one session
   ("Session terminated before the request completed") is reported and
   tolerated up to 0.1 %.
2. Moves: 50 times, the endpoints API moves `actors` to the other server;
   the time from sending the PUT to the first stateless call (through Envoy
   A, back to back) answered by the new server, p50 and p99.

Results: Markdown on stdout and bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import contextlib
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

from run import HOST, STARTUP_TIMEOUT_S, bench_json, machine_info, start_demo_server  # bench/run.py

from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port, wait_for_port
from xds_server.runtime.processes import stop_process

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "mcp_session_call.lua"
TOKEN = "fleet-bench-token-0123456789"
GATEWAY = "fleet"
SESSIONS = 32
MOVES = 50


def write_policies(dest: Path, *, listen_port: int, policy_port: int, http_port: int, replicas: list[int]) -> None:
    dest.mkdir(parents=True)
    endpoints = ", ".join(f"{{host: {HOST}, port: {p}}}" for p in replicas)
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
kind: MCPBackend
metadata: {{name: github}}
spec:
  endpoints: [{endpoints}]
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: actors}}
spec:
  runtimeEndpoints: true
  endpoints: [{{host: {HOST}, port: {replicas[0]}}}]
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {{name: triage}}
spec: {{identity: {{header: triage}}}}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: github}}
spec:
  backend: github
  rules: [{{agents: ["*"], tools: [whoami]}}]
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: actors}}
spec:
  backend: actors
  rules: [{{agents: ["*"], tools: [whoami]}}]
""")


def post(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json",
                     "accept": "application/json, text/event-stream", "x-agent-id": "triage", **headers})  # fmt: skip
        response = conn.getresponse()
        raw = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw) if raw else None
    finally:
        conn.close()


def open_session(port: int) -> str:
    legacy = {"mcp-protocol-version": "2025-11-25"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
            "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}  # fmt: skip
    status, headers, _ = post(port, "/mcp/github", init, legacy)
    if status != 200:
        raise RuntimeError(f"initialize answered {status}")
    session = headers["mcp-session-id"]
    post(port, "/mcp/github", {"jsonrpc": "2.0", "method": "notifications/initialized"},
         {**legacy, "mcp-session-id": session})  # fmt: skip
    return session


def whoami(port: int, backend: str) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                                                   "io.modelcontextprotocol/clientCapabilities": {}}}}  # fmt: skip
    _, _, message = post(port, f"/mcp/{backend}", body, {"mcp-protocol-version": "2026-07-28",
                                                          "mcp-method": "tools/call", "mcp-name": "whoami"})  # fmt: skip
    return str(message["result"]["content"][0]["text"]) if message and "result" in message else ""


def wrk_sessions(wrk: str, port: int, sessions: list[str], connections: int, duration: int) -> subprocess.Popen[str]:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency", "-s", str(LUA),
            f"http://{HOST}:{port}/mcp/github", "--", ",".join(sessions)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(proc: subprocess.Popen[str], duration: int) -> dict[str, Any]:
    out, err = proc.communicate(timeout=duration + 30)
    data = bench_json(proc.returncode, out, err)
    data.update({f"{q}_us": data["latency_us"][q] for q in ("p50", "p90", "p99")})
    data["failed"] = data["requests"] - data["rpc_result"]
    data["first_error"] = err.strip().removeprefix("FIRST_ERROR ")
    # The SDK server now and then ends a session under concurrent calls ("Session terminated before
    # the request completed", its own 5xx): reported, tolerated up to 0.1%; a gateway refusal is not.
    gateway = '"reason"' in data["first_error"]
    if (
        gateway
        or data["failed"] > data["requests"] / 1000
        or any(v for k, v in data["errors"].items() if k != "status")
    ):
        raise RuntimeError(f"{data['failed']} calls without a result, errors {data['errors']}: {data}")
    return data


def put_endpoints(api_port: int, port: int) -> None:
    conn = http.client.HTTPConnection(HOST, api_port, timeout=10)
    try:
        conn.request("PUT", "/endpoints/actors", json.dumps({"endpoints": [{"host": HOST, "port": port}]}),
                     {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})  # fmt: skip
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"PUT /endpoints/actors answered {response.status}")
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "fleet.json")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench/fleet.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-fleet-bench-"))
    started: list[subprocess.Popen[Any]] = []
    envoys: list[EnvoyProcess] = []
    try:
        replica_ports = []
        for i in (1, 2):
            (workdir / f"r{i}").mkdir()
            proc, url = start_demo_server(workdir / f"r{i}", name=f"replica-{i}")
            started.append(proc)
            replica_ports.append(int(url.rsplit(":", 1)[1].split("/")[0]))
        listen = [free_port(HOST), free_port(HOST)]
        policy_port, http_port, xds_port, api_port = (free_port(HOST) for _ in range(4))
        policy_dir = workdir / "policies"
        write_policies(policy_dir, listen_port=listen[0], policy_port=policy_port, http_port=http_port,
                       replicas=replica_ports)  # fmt: skip
        token_file = workdir / "token"
        token_file.write_text(TOKEN)
        serve = subprocess.Popen(
            [sys.executable, "-m", "xds_server.cli", "serve", str(policy_dir), "--host", HOST, "--port", str(xds_port),
             "--policy-port", str(policy_port), "--authz-http-port", str(http_port), "--approvals-port",
             str(free_port(HOST)), "--state-dir", str(workdir / "state"), "--endpoints-port", str(api_port),
             "--endpoints-token-file", str(token_file)],
            stdout=(workdir / "serve.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started.append(serve)
        wait_for_port(HOST, api_port, timeout=STARTUP_TIMEOUT_S)
        for i, port in enumerate(listen):
            bootstrap = render_bootstrap(node_id=f"fleet-{i}", node_cluster=GATEWAY, xds_host=HOST, xds_port=xds_port,
                                         admin_port=0, listen_port=port if i else None)  # fmt: skip
            envoys.append(EnvoyProcess(bootstrap, workdir=workdir / f"envoy-{i}", log_level="error",
                                       concurrency=1).start())  # fmt: skip
        for envoy, port in zip(envoys, listen, strict=True):
            envoy.wait_live(30)
            wait_for_port(HOST, port, timeout=STARTUP_TIMEOUT_S)

        # 1. sessions through one Envoy, then two
        sessions = [open_session(listen[0]) for _ in range(SESSIONS)]
        for run in (wrk_sessions(wrk, listen[0], sessions, 4, 2),):  # warm-up
            result_of(run, 2)
        one = result_of(wrk_sessions(wrk, listen[0], sessions, 16, args.duration), args.duration)
        # Each Envoy its own half of the sessions (as clients pinned to an Envoy by a load balancer would).
        halves = [sessions[: SESSIONS // 2], sessions[SESSIONS // 2 :]]
        pair = [wrk_sessions(wrk, port, half, 8, args.duration) for port, half in zip(listen, halves, strict=True)]
        two = [result_of(p, args.duration) for p in pair]
        two_rps = sum(r["rps"] for r in two)

        # 2. moves
        here = whoami(listen[0], "actors")
        moves, puts = [], []
        for i in range(MOVES):
            target_port = replica_ports[(i + 1) % 2]
            before = here
            t0 = time.perf_counter()
            put_endpoints(api_port, target_port)
            puts.append(time.perf_counter() - t0)
            while (here := whoami(listen[0], "actors")) == before:
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"move {i} not served after 10 s")
            moves.append(time.perf_counter() - t0)

        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(wrk),
            "sessions": {
                "count": SESSIONS,
                "duration_s": args.duration,
                "one_envoy": {
                    "rps": one["rps"],
                    "p50_ms": one["p50_us"] / 1000,
                    "p99_ms": one["p99_us"] / 1000,
                    "failed": one["failed"],
                },
                "two_envoys": {
                    "rps": two_rps,
                    "each": [
                        {"rps": r["rps"], "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000} for r in two
                    ],
                },
                "ratio": two_rps / one["rps"],
            },  # fmt: skip
            "moves": {
                "count": MOVES,
                "p50_ms": statistics.median(moves) * 1000,
                "p99_ms": percentile(moves, 99) * 1000,
                "max_ms": max(moves) * 1000,
                "put_p50_ms": statistics.median(puts) * 1000,
            },  # fmt: skip
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        s, m = result["sessions"], result["moves"]
        print("| run | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
        print(f"| {SESSIONS} sessions, 1 Envoy, 16 connections | {one['rps']:.0f} | {one['p50_us'] / 1000:.2f} | "
              f"{one['p99_us'] / 1000:.2f} |")  # fmt: skip
        for i, r in enumerate(two):
            print(f"| the same, Envoy {'AB'[i]} of 2, 8 connections | {r['rps']:.0f} | {r['p50_us'] / 1000:.2f} | "
                  f"{r['p99_us'] / 1000:.2f} |")  # fmt: skip
        print(f"\n2 Envoys / 1 Envoy: {s['ratio']:.2f}x ({two_rps:.0f} vs {one['rps']:.0f} req/s)")
        failed = [(r["failed"], r["requests"], r["first_error"]) for r in (one, *two) if r["failed"]]
        for n, total, first in failed:
            print(f"backend errors: {n} of {total} calls ({first})")
        print(f"moves ({MOVES}): PUT -> first call served there p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, "
              f"max {m['max_ms']:.1f} ms (the PUT itself p50 {m['put_p50_ms']:.1f} ms)")  # fmt: skip
        print(f"results in {args.out}")
        return 0
    finally:
        for envoy in envoys:
            envoy.stop()
        for proc in started:
            stop_process(proc)
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


if __name__ == "__main__":
    sys.exit(main())
