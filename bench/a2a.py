"""A2A benchmark: SendMessage to the demo A2A agent directly and through the gateway; the cost of its sealed ids.

    .venv/bin/python bench/a2a.py               # or: make bench-a2a (about 1 minute)
    .venv/bin/python bench/a2a.py --seconds 2   # a quick sanity run

Everything on 127.0.0.1 and free ports, started here and stopped by PID: one
demo A2A agent speaking 1.0 (`python -m xds_server.demo.a2a_agent --name
planner`, a2a-sdk on uvicorn, one Python process), `agentxds serve`
(control plane + policy service, one process, default log level, started
as bench/run.py starts it) on a Gateway that identifies callers by the trusted header
`x-agent-id`, and one Envoy it configures (concurrency 1, log level error).
The A2APolicy grants `triage` send and getTask on `planner`, unconditionally:
Envoy's A2A filter and RBAC decide, no ext_authz; every request still goes
through the policy service's exchange (ext_proc): the body read strictly,
the answer's task and context ids sealed for the caller.

1. wrk (bench/a2a_call.lua) sends the same `SendMessage` ("hi"; the agent
   answers a completed task with one artifact) to the agent directly and to
   the gateway's route /a2a/planner as triage, at 1 connection (latency) and
   16 connections (throughput), --seconds each, after a warm-up; with the
   CPU time each process spent per call (/proc/<pid>/stat, utime + stime,
   over the measured seconds). Every answer must be 200 + a completed task
   (through the gateway: with a sealed id); anything else fails the run.
2. In this process, on the same policies: the policy service's A2A exchange
   (`xds_server.authz.a2a.exchange.ExchangeRequest`, as `A2aHandler.exchange`
   builds it per request) for a SendMessage (the request read, then the
   agent's real answer, captured at start-up, sealed through
   `Exchange.answer("application/json").feed(body, True)`) and for a
   GetTask naming a sealed id (opened, checked, the agent's id restored:
   `post`); microseconds per call, time.perf_counter over --iterations
   (5 rounds, the median round).

Results: a table on stdout and bench/results/a2a.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from run import (  # bench/run.py
    HOST,
    cpu_seconds,
    machine_info,
    start_control_plane,
    start_envoy,
    start_server,
    wrk_run,
)

from xds_server.authz.a2a.exchange import ExchangeRequest
from xds_server.authz.protocols import Exchange
from xds_server.authz.sealing import Sealer
from xds_server.authz.state import PolicyIndex
from xds_server.core.a2a import A2A_METADATA_NAMESPACE
from xds_server.ir.build import build_ir
from xds_server.policy.load import load_directory
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port
from xds_server.runtime.processes import stop_process

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "a2a_call.lua"
DEFAULT_OUT = BENCH / "results" / "a2a.json"
GATEWAY = "a2abench"
AGENT = "planner"  # the A2AAgent (and the demo agent's name); route /a2a/planner
CALLER = "triage"
IDENTITY_HEADER = "x-agent-id"
TEXT = "hi"
LEVELS = (1, 16)
MESSAGE = {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": TEXT}]}
SEND = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": MESSAGE}}
A2A_HEADERS = {"content-type": "application/json", "a2a-version": "1.0"}


def start_agent(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The demo A2A agent (1.0) on a kernel-chosen port; return it and its URL (from the READY line)."""
    return start_server([sys.executable, "-m", "xds_server.demo.a2a_agent", "--host", HOST, "--port", "0",
                         "--name", AGENT], workdir, "agent", "demo A2A agent")  # fmt: skip


def write_policies(dest: Path, *, listen_port: int, policy_port: int, http_port: int, agent_port: int) -> None:
    dest.mkdir(parents=True)
    (dest / "all.yaml").write_text(f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: {HOST}, port: {listen_port}}}
  identity: {{trustedHeader: {IDENTITY_HEADER}}}
  policyService: {{host: {HOST}, port: {policy_port}, extAuthz: http, extAuthzHttpPort: {http_port}}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {{name: {CALLER}}}
spec: {{identity: {{header: {CALLER}}}}}
---
apiVersion: agentxds.dev/v1
kind: A2AAgent
metadata: {{name: {AGENT}}}
spec:
  endpoints: [{{host: {HOST}, port: {agent_port}}}]
---
apiVersion: agentxds.dev/v1
kind: A2APolicy
metadata: {{name: {AGENT}}}
spec:
  a2aAgent: {AGENT}
  rules:
    - agents: [{CALLER}]
      operations: [send, getTask]
      skills: [echo]
""")


def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m, url
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=10)
    try:
        conn.request("POST", m.group(3), body=json.dumps(body), headers={**A2A_HEADERS, **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def counters(envoy: EnvoyProcess) -> dict[str, int]:
    """Requests Envoy sent to the agent, ext_proc streams (and the messages it sent on them) and ext_authz
    decisions, so far."""
    total = {"upstream": 0, "ext_proc": 0, "ext_proc_msgs": 0, "ext_authz": 0}
    for k, v in envoy.stats().items():
        if k.endswith(".upstream_rq_total") and k.startswith("cluster.") and AGENT in k:
            total["upstream"] += int(v)
        elif k.startswith("http.") and k.endswith(".ext_proc.streams_started"):
            total["ext_proc"] += int(v)
        elif k.startswith("http.") and k.endswith(".ext_proc.stream_msgs_sent"):
            total["ext_proc_msgs"] += int(v)
        elif k.startswith("http.") and ".ext_authz." in k and k.endswith((".ok", ".denied", ".error")):
            total["ext_authz"] += int(v)
    return total


def task_of(status: int, raw: bytes) -> dict[str, Any]:
    """The task of a SendMessage answer (1.0: result.task) or a GetTask answer (the result itself)."""
    body = json.loads(raw)
    result = body.get("result") if isinstance(body, dict) else None
    task = result.get("task", result) if isinstance(result, dict) else None
    if status != 200 or not isinstance(task, dict) or task.get("status", {}).get("state") != "TASK_STATE_COMPLETED":
        raise RuntimeError(f"expected 200 and a completed task, got {status} {raw[:300]!r}")
    return task


def check(direct_url: str, gateway_url: str, envoy: EnvoyProcess) -> dict[str, Any]:
    """One SendMessage each way, and a GetTask of the gateway's (sealed) task through the gateway:
    the agent's ids directly, sealed ones through the gateway, each call one ext_proc stream and no
    ext_authz. Returns the agent's raw answer (the microbenchmark's input)."""
    status, direct_raw = post(direct_url, SEND, {})
    direct = task_of(status, direct_raw)
    if direct["id"].startswith("t1."):
        raise RuntimeError(f"the agent's own task id looks sealed: {direct['id']}")
    before = counters(envoy)
    status, raw = post(gateway_url, SEND, {IDENTITY_HEADER: CALLER})
    sent = task_of(status, raw)
    status, raw = post(gateway_url, {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": sent["id"]}},
                       {IDENTITY_HEADER: CALLER})  # fmt: skip
    got = task_of(status, raw)
    delta = {k: v - before[k] for k, v in counters(envoy).items()}
    if not (sent["id"].startswith("t1.") and sent["contextId"].startswith("t1.") and got["id"] == sent["id"]):
        raise RuntimeError(f"expected sealed ids through the gateway, got {sent['id']!r} then {got['id']!r}")
    if (delta["upstream"], delta["ext_proc"], delta["ext_authz"]) != (2, 2, 0):
        raise RuntimeError(f"expected 2 requests upstream, 2 ext_proc streams, no ext_authz; Envoy counted {delta}")
    status, raw = post(gateway_url, SEND, {IDENTITY_HEADER: "nobody"})
    if b'"error"' not in raw:
        raise RuntimeError(f"an unknown caller was not refused: {status} {raw[:200]!r}")
    print(f"check direct  {direct['id']}\ncheck gateway {sent['id'][:60]}... (GetTask answered it again; "
          f"{delta['ext_proc_msgs'] / 2:g} ext_proc messages per call)", flush=True)  # fmt: skip
    return {"direct_answer": json.loads(direct_raw), "gateway_task_id": sent["id"], "counters": delta}


# -- wrk -----------------------------------------------------------------------


def run_wrk(wrk: str, url: str, *, connections: int, seconds: int, header: str = "") -> dict[str, Any]:
    return wrk_run(wrk, url, LUA, [TEXT, header], connections=connections, seconds=seconds)[0]


def problems(path: str, r: dict[str, Any]) -> list[str]:
    n, out = r["requests"], []
    socket_errors = sum(v for k, v in r["errors"].items() if k != "status")
    if socket_errors:
        out.append(f"{socket_errors} socket errors {r['errors']}")
    if n == 0:
        out.append("no requests completed")
    if not r["status_2xx"] == r["rpc_result"] == r["completed"] == n:
        out.append(f"expected {n} x 200 + completed task, got 2xx={r['status_2xx']} result={r['rpc_result']} "
                   f"completed={r['completed']} rpc_error={r['rpc_error']}")  # fmt: skip
    if r["sealed"] != (n if path == "gateway" else 0):
        out.append(f"{r['sealed']} of {n} answers carried a sealed id")
    counted = r.get("counters")
    # wrk stops mid-request at the deadline, so Envoy may count a few more than wrk completed.
    if counted is not None:
        if not n <= counted["ext_proc"] <= n + 64 or not n <= counted["upstream"] <= n + 64:
            out.append(f"{n} requests but Envoy counted {counted}")
        if counted["ext_authz"]:
            out.append(f"{counted['ext_authz']} requests went to ext_authz")
    return out


# -- the exchange, in process ----------------------------------------------------------


def per_call_us(fn: Callable[[], object], iterations: int, rounds: int = 5) -> dict[str, float]:
    """µs per call of fn: `rounds` rounds of iterations/rounds calls (after a warm-up); median and best round."""
    each = max(1, iterations // rounds)
    for _ in range(min(1000, each)):
        fn()
    results = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(each):
            fn()
        results.append((time.perf_counter() - t0) / each * 1e6)
    return {"median_us": statistics.median(results), "min_us": min(results), "calls": each * rounds}


def microbench(policy_dir: Path, listen_port: int, answer: dict[str, Any], iterations: int) -> dict[str, Any]:
    view = PolicyIndex.from_ir(build_ir(load_directory(policy_dir))).route(AGENT)
    assert view is not None, f"no route {AGENT!r}"
    sealer = Sealer(secrets.token_bytes(32))
    headers = {":method": "POST", ":path": view.route.path, ":authority": f"{HOST}:{listen_port}",
               "content-type": "application/json", "a2a-version": "1.0", IDENTITY_HEADER: CALLER}  # fmt: skip
    agents = view.agents_of(headers)
    assert agents == (CALLER,), agents
    send_body = json.dumps(SEND, separators=(",", ":")).encode()
    send_md = {A2A_METADATA_NAMESPACE: {"method": "SendMessage", "id": 1.0}}  # as Envoy's metadata holds it
    answer_body = json.dumps(answer, separators=(",", ":")).encode()
    raw_id = answer["result"]["task"]["id"]

    def send_request() -> Exchange:
        outcome = ExchangeRequest(view, sealer, agents, {}, headers).post(send_body, send_md)
        assert isinstance(outcome, Exchange)
        return outcome

    def send_whole() -> bytes:
        return send_request().answer("application/json").feed(answer_body, True)

    sealed_answer = json.loads(send_whole())
    sealed_id = sealed_answer["result"]["task"]["id"]
    assert sealed_id.startswith("t1.") and sealed_answer["result"]["task"]["contextId"].startswith("t1.")
    get_body = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": sealed_id}},
                          separators=(",", ":")).encode()  # fmt: skip
    get_md = {A2A_METADATA_NAMESPACE: {"method": "GetTask", "id": 2.0}}

    def get_request() -> Exchange:
        outcome = ExchangeRequest(view, sealer, agents, {}, headers).post(get_body, get_md)
        assert isinstance(outcome, Exchange)
        return outcome

    restored = get_request().body
    assert restored is not None and raw_id.encode() in restored and sealed_id.encode() not in restored, restored

    def plain_json() -> bytes:
        return json.dumps(json.loads(answer_body), separators=(",", ":")).encode()

    out: dict[str, Any] = {
        "send_request": per_call_us(send_request, iterations),
        "send_whole": per_call_us(send_whole, iterations),
        "get_open_restore": per_call_us(get_request, iterations),
        "json_roundtrip_of_answer": per_call_us(plain_json, iterations),
    }
    out["send_seal_answer_derived_us"] = out["send_whole"]["median_us"] - out["send_request"]["median_us"]
    out["sizes"] = {"send_request_bytes": len(send_body), "answer_bytes": len(answer_body),
                    "sealed_answer_bytes": len(send_whole()), "get_request_bytes": len(get_body),
                    "sealed_id_chars": len(sealed_id)}  # fmt: skip
    return out


# -- main ----------------------------------------------------------------------


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds per measured point (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per path (default 3)")
    parser.add_argument("--iterations", type=int, default=20000, help="in-process exchange calls (default 20000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default bench/results/a2a.json)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with the logs")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench/a2a.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-a2a-bench-"))
    agent: subprocess.Popen[bytes] | None = None
    serve: subprocess.Popen[bytes] | None = None
    envoy: EnvoyProcess | None = None
    failed, finished = False, False
    try:
        agent, direct_url = start_agent(workdir)
        agent_port = int(direct_url.rsplit(":", 1)[1].strip("/"))
        listen_port, policy_port, http_port = free_port(HOST), free_port(HOST), free_port(HOST)
        policy_dir = workdir / "policies"
        write_policies(policy_dir, listen_port=listen_port, policy_port=policy_port, http_port=http_port,
                       agent_port=agent_port)  # fmt: skip
        serve, xds_port = start_control_plane(policy_dir, workdir, policy_port=policy_port,
                                              authz_http_port=http_port, name="serve")  # fmt: skip
        envoy = start_envoy(workdir / "envoy", node_id="a2a-bench", gateway=GATEWAY, xds_port=xds_port,
                            listen_port=listen_port)  # fmt: skip
        gateway_url = f"http://{HOST}:{listen_port}/a2a/{AGENT}"
        print(f"direct  {direct_url}\ngateway {gateway_url} (as {CALLER}: {IDENTITY_HEADER})\nlogs    {workdir}",
              flush=True)  # fmt: skip
        checked = check(direct_url, gateway_url, envoy)
        info = machine_info(wrk)
        print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}; envoy {info['envoy']}; {info['wrk']}", flush=True)

        # 2 first, while everything else is idle.
        micro = microbench(policy_dir, listen_port, checked["direct_answer"], args.iterations)
        print(f"exchange in process: SendMessage {micro['send_whole']['median_us']:.1f} us "
              f"(request {micro['send_request']['median_us']:.1f} + sealing the answer "
              f"{micro['send_seal_answer_derived_us']:.1f}), GetTask open+restore "
              f"{micro['get_open_restore']['median_us']:.1f} us", flush=True)  # fmt: skip

        urls = {"direct": direct_url, "gateway": gateway_url}
        headers = {"direct": "", "gateway": f"{IDENTITY_HEADER}: {CALLER}"}
        load_before = os.getloadavg()
        started = time.monotonic()
        for path in urls:
            run_wrk(wrk, urls[path], connections=max(LEVELS), seconds=args.warmup, header=headers[path])
        points: dict[int, dict[str, dict[str, Any]]] = {}
        for c in LEVELS:
            points[c] = {}
            for path in urls:
                pids = {"agent": agent.pid}
                if path == "gateway":
                    pids |= {"envoy": envoy.pid, "agentxds_serve": serve.pid}
                before, cpu_before = counters(envoy), {k: cpu_seconds(v) for k, v in pids.items()}
                r = run_wrk(wrk, urls[path], connections=c, seconds=args.seconds, header=headers[path])
                cpu_after = {k: cpu_seconds(v) for k, v in pids.items()}
                if path == "gateway":
                    r["counters"] = {k: v - before[k] for k, v in counters(envoy).items()}
                r["cpu_us_per_call"] = {k: (cpu_after[k] - cpu_before[k]) * 1e6 / max(1, r["requests"]) for k in pids}
                r["problems"] = problems(path, r)
                failed = failed or bool(r["problems"])
                points[c][path] = r
                lat, cpu = r["latency_us"], r["cpu_us_per_call"]
                print(f"c={c:<3} {path:<8} {r['rps']:7.0f} req/s  p50 {ms(lat['p50'])} ms  p99 {ms(lat['p99'])} ms  "
                      f"cpu/call " + ", ".join(f"{k} {v:.0f} us" for k, v in cpu.items())
                      + (f"  PROBLEMS: {'; '.join(r['problems'])}" if r["problems"] else ""), flush=True)  # fmt: skip
        elapsed = time.monotonic() - started

        one, sixteen = points[1], points[16]
        summary = {
            "throughput_ratio_c1": one["gateway"]["rps"] / one["direct"]["rps"],
            "throughput_ratio_c16": sixteen["gateway"]["rps"] / sixteen["direct"]["rps"],
            "added_p50_ms_c1": (one["gateway"]["latency_us"]["p50"] - one["direct"]["latency_us"]["p50"]) / 1000,
            "added_p99_ms_c1": (one["gateway"]["latency_us"]["p99"] - one["direct"]["latency_us"]["p99"]) / 1000,
            "policy_service_cpu_us_per_call_c16": sixteen["gateway"]["cpu_us_per_call"]["agentxds_serve"],
            "envoy_cpu_us_per_call_c16": sixteen["gateway"]["cpu_us_per_call"]["envoy"],
            "ext_proc_msgs_per_call_c16": sixteen["gateway"]["counters"]["ext_proc_msgs"]
            / max(1, sixteen["gateway"]["counters"]["ext_proc"]),
            # The exchange's own Python work (in process) against all the policy service process spent per call.
            "exchange_share_of_policy_service_cpu_c16": micro["send_whole"]["median_us"]
            / max(1e-9, sixteen["gateway"]["cpu_us_per_call"]["agentxds_serve"]),
        }
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": info,
            "settings": {
                "seconds": args.seconds,
                "warmup_s": args.warmup,
                "connections": list(LEVELS),
                "iterations": args.iterations,
                "wrk_threads": 1,
                "envoy_concurrency": 1,
                "envoy_log_level": "error",
                "agent": f"python -m xds_server.demo.a2a_agent --name {AGENT} (A2A 1.0, a2a-sdk, uvicorn, one process)",
                "policy_service": "agentxds serve (control plane + policy service, one process), default log level",
                "call": "SendMessage, text 'hi' (JSON-RPC id and messageId count up per request)",
                "gateway": f"route /a2a/{AGENT}, caller {CALLER} by trusted header {IDENTITY_HEADER}; "
                "A2APolicy: send and getTask unconditionally (no ext_authz); every request through ext_proc",
                "cpu": "utime+stime from /proc/<pid>/stat over each measured wrk run, divided by wrk's completed "
                "requests; agentxds_serve is the whole process (control plane, idle during the run, and the "
                "policy service: gRPC ext_proc server, the exchange, logging)",
            },
            "checks": {"gateway_task_id": checked["gateway_task_id"], "counters": checked["counters"]},
            "points": {str(c): by_path for c, by_path in points.items()},
            "summary": summary,
            "exchange_in_process": micro,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "measure_seconds": round(elapsed, 1),
            "ok": not failed,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

        print("\n| path | conns | req/s | p50 ms | p99 ms | agent CPU µs/call | Envoy CPU µs/call | "
              "agentxds serve CPU µs/call |\n|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
        for c, by_path in points.items():
            for path, r in by_path.items():
                lat, cpu = r["latency_us"], r["cpu_us_per_call"]
                shown = [f"{cpu[k]:.0f}" if k in cpu else "-" for k in ("agent", "envoy", "agentxds_serve")]
                print(f"| {path} | {c} | {r['rps']:.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} | {' | '.join(shown)} |")
        print(f"\ngateway / direct req/s: {summary['throughput_ratio_c1']:.2f} at 1 connection, "
              f"{summary['throughput_ratio_c16']:.2f} at 16; added p50 {summary['added_p50_ms_c1']:+.2f} ms, "
              f"p99 {summary['added_p99_ms_c1']:+.2f} ms (1 connection)")  # fmt: skip
        print("\n| exchange, in process | µs/call (median round) | best round |\n|---|---:|---:|")
        names = {"send_request": "SendMessage: request read", "send_whole": "SendMessage: request + answer sealed",
                 "get_open_restore": "GetTask: sealed id opened, agent's id restored",
                 "json_roundtrip_of_answer": "(reference: json.loads + dumps of the answer)"}  # fmt: skip
        for key, label in names.items():
            print(f"| {label} | {micro[key]['median_us']:.1f} | {micro[key]['min_us']:.1f} |")
        print(f"| SendMessage: sealing the answer (difference) | {micro['send_seal_answer_derived_us']:.1f} | |")
        print(f"\nper gateway call at 16 connections: Envoy {summary['envoy_cpu_us_per_call_c16']:.0f} us CPU, agentxds "
              f"serve {summary['policy_service_cpu_us_per_call_c16']:.0f} us CPU, of which the exchange in process "
              f"(SendMessage, request + sealing) is about {summary['exchange_share_of_policy_service_cpu_c16']:.0%}; "
              f"{summary['ext_proc_msgs_per_call_c16']:.1f} ext_proc messages per call")  # fmt: skip
        load_after = os.getloadavg()
        print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; results in {args.out}")
        if failed:
            print(f"FAILED: some points did not answer as expected (see PROBLEMS above); logs in {workdir}",
                  file=sys.stderr)  # fmt: skip
        finished = True
        return 1 if failed else 0
    finally:
        if envoy is not None:
            envoy.stop()
        stop_process(serve)
        stop_process(agent)
        if finished and not failed and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
