"""Gateway overhead benchmark: wrk against the MCP server directly and through Envoy.

    .venv/bin/python bench/run.py            # or: make bench
    .venv/bin/python bench/run.py --check    # start everything, verify the three paths, stop

One run measures three paths, each at every concurrency level, with wrk and
bench/mcp_call.lua (a 2026-07-28 `tools/call`, no session):

  direct   wrk -> demo MCP server                      (`whoami`, allowed)
  allowed  wrk -> Envoy (agentxds) -> demo MCP server  (`whoami`, allowed for triage)
  denied   wrk -> Envoy (agentxds)                     (`delete_repo`, denied: Envoy's
                                                        403 + JSON-RPC error; the
                                                        server is never reached)

Everything it needs it starts itself on 127.0.0.1 and free ports: the demo
server's app with JSON answers (through bench/backend.py, for TCP_NODELAY;
`--server stock` runs `python -m xds_server.demo.mcp_server` instead), the control plane (`agentxds serve` on a copy of
policies/demo rewritten to those ports) and Envoy (`EnvoyProcess`, concurrency
1, log level error; the listener's stdout access log is product config and
stays on, written to the Envoy log file). Each is stopped by its PID on exit.

Results: a Markdown table on stdout and bench/results/latest.json. Ratios are
gateway / direct for throughput and gateway minus direct for latency, from
the same run. A run fails (exit 1) when a path does not answer as expected:
any non-2xx or JSON-RPC error on direct/allowed, anything but 403 + JSON-RPC
error on denied, any socket error, or upstream requests during a denied run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess, find_envoy_binary
from xds_server.runtime.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA_SCRIPT = BENCH / "mcp_call.lua"
POLICY_SRC = ROOT / "policies" / "demo"
DEFAULT_OUT = BENCH / "results" / "latest.json"

HOST = "127.0.0.1"
GATEWAY = "demo"  # the Gateway in policies/demo, also the Envoy node cluster
BACKEND = "github"
AGENT = "triage"
ALLOWED_TOOL = "whoami"  # cheap: returns a constant string
DENIED_TOOL = "delete_repo"  # no rule grants it to anyone

PATHS = ("direct", "allowed", "denied")
STARTUP_TIMEOUT_S = 30.0
WRK_GRACE_S = 20.0  # beyond -d, before a wrk run is killed


# -- processes -----------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM the process (by PID only), SIGKILL it after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


SERVER_COMMANDS = {
    # The demo app on a TCP_NODELAY socket (see bench/backend.py for why).
    "bench": [sys.executable, str(BENCH / "backend.py"), "--host", HOST, "--port", "0", "--path", "/mcp"],
    # The demo server exactly as `agentxds up --demo` runs it (plus JSON answers).
    "stock": [sys.executable, "-m", "xds_server.demo.mcp_server", "--host", HOST, "--port", "0", "--path", "/mcp",
              "--json-response"],
}  # fmt: skip


def start_demo_server(workdir: Path, kind: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start the demo MCP server on a kernel-chosen port; return it and its URL (from the READY line)."""
    err = (workdir / "demo-mcp.err").open("wb")
    proc = subprocess.Popen(
        SERVER_COMMANDS[kind], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
    )
    found: list[str] = []

    def read_ready() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("READY "):
                found.append(line.split(" ", 1)[1])
                break
        # Keep draining so the server never blocks on a full pipe.
        for _ in proc.stdout:
            pass

    threading.Thread(target=read_ready, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"demo MCP server did not print READY; see {workdir / 'demo-mcp.err'}")
        time.sleep(0.02)
    return proc, found[0]


def write_policies(dest: Path, *, listen_port: int, backend_port: int) -> None:
    """Copy policies/demo into `dest`, listening on `listen_port` and sending to `backend_port`."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(POLICY_SRC.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(src.read_text()) if d]
        for doc in docs:
            spec = doc.get("spec", {})
            if doc.get("kind") == "Gateway":
                spec["listen"] = {"address": HOST, "port": listen_port}
            elif doc.get("kind") == "MCPBackend":
                spec["endpoints"] = [{"host": HOST, "port": backend_port}]
        (dest / src.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def start_control_plane(policy_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port(HOST)
    log = (workdir / "control-plane.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xds_server.cli", "--log-level", "WARNING", "serve", str(policy_dir),
         "--host", HOST, "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(HOST, port, timeout=STARTUP_TIMEOUT_S)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"control plane did not listen; see {workdir / 'control-plane.log'}") from None
    return proc, port


# -- checks --------------------------------------------------------------------


def mcp_call(url: str, tool: str) -> tuple[int, dict[str, Any]]:
    """One request exactly like bench/mcp_call.lua sends; return (status, JSON body)."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m, url
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {},
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities": {}}},
    }  # fmt: skip
    headers = {
        "content-type": "application/json", "accept": "application/json, text/event-stream",
        "x-agent-id": AGENT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": tool,
    }  # fmt: skip
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=10)
    try:
        conn.request("POST", m.group(3), body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def check_paths(urls: dict[str, str], envoy: EnvoyProcess) -> dict[str, Any]:
    """Verify each path answers as the benchmark expects, before measuring it."""
    out: dict[str, Any] = {}
    for path in PATHS:
        tool = DENIED_TOOL if path == "denied" else ALLOWED_TOOL
        status, body = mcp_call(urls[path], tool)
        out[path] = {"status": status, "body": body}
        if path == "denied":
            ok = status == 403 and isinstance(body, dict) and "error" in body
        else:
            ok = status == 200 and isinstance(body, dict) and "result" in body and not body["result"].get("isError")
        if not ok:
            raise RuntimeError(f"{path}: unexpected answer {status} {body!r}; logs in {envoy.workdir}")
        print(f"check {path:<8} {status} {json.dumps(body)[:110]}", flush=True)
    return out


def upstream_requests(envoy: EnvoyProcess) -> int:
    """Requests Envoy has sent to the backend's cluster(s) so far."""
    stats = envoy.stats()
    return sum(int(v) for k, v in stats.items() if k.endswith(".upstream_rq_total") and BACKEND in k)


# -- wrk -----------------------------------------------------------------------


def run_wrk(wrk: str, url: str, tool: str, *, connections: int, duration: int) -> dict[str, Any]:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency",
            "-s", str(LUA_SCRIPT), url, "--", tool, AGENT]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + WRK_GRACE_S)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH_JSON line:\n{proc.stdout}")
    data: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
    # Cross-check against wrk's own text output.
    m = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    data["rps_wrk"] = float(m.group(1)) if m else None
    data["wrk_output"] = proc.stdout
    return data


def problems(path: str, r: dict[str, Any]) -> list[str]:
    """What is wrong with a measured point (empty when it is as expected)."""
    out = []
    n = r["requests"]
    socket_errors = sum(v for k, v in r["errors"].items() if k != "status")
    if socket_errors:
        out.append(f"{socket_errors} socket errors {r['errors']}")
    if n == 0:
        out.append("no requests completed")
    if path == "denied":
        if r["status_4xx"] != n or r["rpc_error"] != n:
            out.append(f"expected {n} x 403 + JSON-RPC error, got 4xx={r['status_4xx']} rpc_error={r['rpc_error']}")
        if r.get("upstream_requests", 0):
            out.append(f"{r['upstream_requests']} requests reached the backend")
    elif r["status_2xx"] != n or r["rpc_result"] != n:
        out.append(f"expected {n} x 200 + result, got 2xx={r['status_2xx']} result={r['rpc_result']} "
                   f"rpc_error={r['rpc_error']}")  # fmt: skip
    return out


# -- report --------------------------------------------------------------------


def machine_info(wrk: str) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
        model = m.group(1).strip() if m else ""
    envoy_version = subprocess.run([find_envoy_binary(), "--version"], capture_output=True, text=True,
                                   timeout=10).stdout.strip().split("version:")[-1].strip()  # fmt: skip
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=5).stdout.splitlines()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy_version,
        "wrk": wrk_version[0].strip() if wrk_version else "",
    }


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def summarize(points: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for c, by_path in points.items():
        d = by_path["direct"]
        row: dict[str, Any] = {}
        for path in ("allowed", "denied"):
            g = by_path[path]
            row[path] = {
                "throughput_ratio": g["rps"] / d["rps"] if d["rps"] else None,
                "added_p50_ms": (g["latency_us"]["p50"] - d["latency_us"]["p50"]) / 1000,
                "added_p99_ms": (g["latency_us"]["p99"] - d["latency_us"]["p99"]) / 1000,
            }
        ratios[str(c)] = row
    return ratios


def markdown(points: dict[int, dict[str, dict[str, Any]]], ratios: dict[str, Any]) -> str:
    lines = [
        "| path | conns | req/s | p50 ms | p90 ms | p99 ms | non-2xx | JSON-RPC errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, by_path in points.items():
        for path in PATHS:
            r = by_path[path]
            lat = r["latency_us"]
            non2xx = r["requests"] - r["status_2xx"]
            lines.append(f"| {path} | {c} | {r['rps']:.0f} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} "
                         f"| {non2xx}/{r['requests']} | {r['rpc_error']}/{r['requests']} |")  # fmt: skip
    lines += [
        "",
        "| conns | allowed/direct req/s | allowed +p50 ms | allowed +p99 ms "
        "| denied/direct req/s | denied +p50 ms | denied +p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, row in ratios.items():
        a, n = row["allowed"], row["denied"]
        lines.append(f"| {c} | {a['throughput_ratio']:.2f} | {a['added_p50_ms']:+.2f} | {a['added_p99_ms']:+.2f} "
                     f"| {n['throughput_ratio']:.2f} | {n['added_p50_ms']:+.2f} | {n['added_p99_ms']:+.2f} |")  # fmt: skip
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured point (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per path (default 3)")
    p.add_argument("--connections", default="1,4,16", help="comma-separated wrk -c levels (default 1,4,16)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--server", choices=sorted(SERVER_COMMANDS), default="bench",
                   help="bench: the demo app on a TCP_NODELAY socket (default); stock: python -m xds_server.demo.mcp_server")
    p.add_argument("--check", action="store_true", help="only start everything and verify the three paths")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with the logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(c) for c in args.connections.split(",") if c.strip()]
    budget = len(levels) * len(PATHS) * (args.duration + 1) + len(PATHS) * (args.warmup + 1)
    if budget > 600:
        raise SystemExit(f"this run would take about {budget}s; keep it under 600s")
    wrk = shutil.which("wrk")
    if wrk is None and not args.check:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk; macOS: brew install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="agentxds-bench-"))
    server: subprocess.Popen[bytes] | None = None
    control: subprocess.Popen[bytes] | None = None
    envoy: EnvoyProcess | None = None
    failed = False
    finished = False  # logs are kept when the run raised or failed
    try:
        server, direct_url = start_demo_server(workdir, args.server)
        backend_port = int(re.search(r":(\d+)/", direct_url).group(1))  # type: ignore[union-attr]
        listen_port = free_port(HOST)
        write_policies(workdir / "policies", listen_port=listen_port, backend_port=backend_port)
        control, xds_port = start_control_plane(workdir / "policies", workdir)
        bootstrap = render_bootstrap(node_id="bench-envoy", node_cluster=GATEWAY, xds_host=HOST, xds_port=xds_port,
                                     admin_port=0)  # fmt: skip
        envoy = EnvoyProcess(bootstrap, workdir=workdir / "envoy", log_level="error", concurrency=1).start()
        envoy.wait_live(timeout=STARTUP_TIMEOUT_S)
        wait_for_port(HOST, listen_port, timeout=STARTUP_TIMEOUT_S)
        gateway_url = f"http://{HOST}:{listen_port}/mcp/{BACKEND}"
        urls = {"direct": direct_url, "allowed": gateway_url, "denied": gateway_url}
        print(f"direct  {direct_url}\ngateway {gateway_url}\nlogs    {workdir}", flush=True)
        checks = check_paths(urls, envoy)
        if args.check:
            finished = True
            return 0
        assert wrk is not None

        info = machine_info(wrk)
        print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}; envoy {info['envoy']}; {info['wrk']}", flush=True)
        load_before = os.getloadavg()
        started = time.monotonic()
        for path in PATHS:  # warm-up: connections, Python imports/caches, Envoy's upstream pool
            tool = DENIED_TOOL if path == "denied" else ALLOWED_TOOL
            run_wrk(wrk, urls[path], tool, connections=max(levels), duration=args.warmup)
        print(f"warm-up done ({time.monotonic() - started:.0f}s)", flush=True)

        points: dict[int, dict[str, dict[str, Any]]] = {}
        for c in levels:
            points[c] = {}
            for path in PATHS:
                tool = DENIED_TOOL if path == "denied" else ALLOWED_TOOL
                before = upstream_requests(envoy)
                r = run_wrk(wrk, urls[path], tool, connections=c, duration=args.duration)
                r["upstream_requests"] = upstream_requests(envoy) - before
                r["problems"] = problems(path, r)
                failed = failed or bool(r["problems"])
                points[c][path] = r
                lat = r["latency_us"]
                print(f"c={c:<3} {path:<8} {r['rps']:8.0f} req/s  p50 {ms(lat['p50'])} ms  p99 {ms(lat['p99'])} ms"
                      + (f"  PROBLEMS: {'; '.join(r['problems'])}" if r["problems"] else ""), flush=True)  # fmt: skip
        elapsed = time.monotonic() - started

        ratios = summarize(points)
        envoy_log_bytes = envoy.log_path.stat().st_size if envoy.log_path.exists() else 0
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": info,
            "settings": {
                "duration_s": args.duration, "warmup_s": args.warmup, "connections": levels, "wrk_threads": 1,
                "envoy_concurrency": 1, "envoy_log_level": "error", "access_log": "stdout, to the Envoy log file",
                "server": ("demo app via bench/backend.py (TCP_NODELAY)" if args.server == "bench"
                           else "python -m xds_server.demo.mcp_server --json-response")
                          + ", uvicorn, one process",
                "request": f"2026-07-28 tools/call, agent {AGENT}, allowed tool {ALLOWED_TOOL}, denied tool {DENIED_TOOL}",
            },  # fmt: skip
            "checks": checks,
            "points": {str(c): by_path for c, by_path in points.items()},
            "ratios": ratios,
            "envoy_log_bytes": envoy_log_bytes,
            # 1/5/15-minute load averages: anything else running skews the numbers.
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "measure_seconds": round(elapsed, 1),
            "ok": not failed,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print()
        print(markdown(points, ratios))
        print(f"\nratios: gateway / direct (req/s), gateway - direct (latency); results in {args.out}")
        print(f"load average before {load_before[0]:.2f}, after {result['loadavg_after'][0]:.2f} "
              f"(the benchmark itself keeps about 2 busy); Envoy log (access log) {envoy_log_bytes} bytes")
        if failed:
            print(f"FAILED: some points did not answer as expected (see PROBLEMS above); logs in {workdir}",
                  file=sys.stderr)
        finished = True
        return 1 if failed else 0
    finally:
        if envoy is not None:
            envoy.stop()
        stop_process(control)
        stop_process(server)
        if finished and not failed and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
