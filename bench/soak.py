"""Soak benchmark: the gateway's memory and served rate under abuse, against the same gateway at rest,
in one run.

    .venv/bin/python bench/soak.py                 # or: make bench-soak
    .venv/bin/python bench/soak.py --duration 30 --connections 4

One gateway stack as users run it: the demo policies (policies/demo, the
Gateway's default limits), `agentxds serve` (control plane + policy service,
one process) and Envoy (concurrency 1), the demo MCP server behind it. Phases:

  idle     nothing runs: memory at rest
  polite   wrk (bench/mcp_call.lua: `whoami` as triage, allowed natively) for --duration s
  abused   the same wrk run while every abuser of tests/e2e/abusers.py runs beside it
           (slowloris, trickled bodies, header floods, ambiguous identities, unknown agents,
           denied tools, malformed HTTP, deep JSON, oversized bodies, garbage, churn)
  after    the abusers stopped, --settle s later: memory again

Memory is sampled every 0.2 s: the resident set (VmRSS) of Envoy and of the
control-plane process, and Envoy's own heap figures (server.memory_allocated,
server.memory_heap_size) once a second. Results: a Markdown table on stdout
and bench/results/soak.json. The run fails (exit 1) when wrk sees any socket
error, any non-2xx or any JSON-RPC error on the allowed calls, or when an
abuser is answered in a way tests/e2e/abusers.py does not allow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from run import (  # bench/run.py: the same processes and wrk invocation as the latency benchmark
    BACKEND,
    GATEWAY,
    HOST,
    LUA_SCRIPT,
    ROOT,
    machine_info,
    ms,
    problems,
    start_control_plane,
    start_demo_server,
    start_envoy,
    write_policies,
    wrk_run,
)

sys.path.insert(0, str(ROOT))
from tests.e2e.abusers import Tally, start_abusers, unexpected  # noqa: E402
from xds_server.runtime.envoy import EnvoyProcess  # noqa: E402
from xds_server.runtime.ports import free_port  # noqa: E402
from xds_server.runtime.processes import stop_process  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "soak.json"
CALL = ("whoami", {})
AGENT_HEADER = "x-agent-id"
AGENT = "triage"


def allowed_calls(wrk: str, url: str, *, connections: int, duration: int) -> dict[str, Any]:
    """wrk's allowed calls (`CALL` as `AGENT`, identified by the demo's trusted header), as bench/run.py
    measures a path."""
    tool, arguments = CALL
    data, output = wrk_run(wrk, url, LUA_SCRIPT, [tool, "-", json.dumps(arguments), f"{AGENT_HEADER}: {AGENT}"],
                           connections=connections, seconds=duration)  # fmt: skip
    data["wrk_output"] = output
    return data


def rss_mib(pid: int) -> float:
    """The resident set of `pid` in MiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else 0.0


class MemorySampler:
    """Samples the RSS of the given processes (and Envoy's heap stats) in a thread, per named phase."""

    def __init__(self, pids: dict[str, int], envoy: EnvoyProcess) -> None:
        self.pids = pids
        self.envoy = envoy
        self.phase = "idle"
        self.samples: dict[str, list[dict[str, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        heap: dict[str, float] = {}
        while not self._stop.is_set():
            sample = {name: rss_mib(pid) for name, pid in self.pids.items()}
            if tick % 5 == 0:  # the admin API costs Envoy a little: once a second
                stats = self.envoy.stats()
                heap = {
                    "envoy_allocated": int(stats.get("server.memory_allocated", 0)) / 2**20,
                    "envoy_heap": int(stats.get("server.memory_heap_size", 0)) / 2**20,
                }
            self.samples.setdefault(self.phase, []).append({**sample, **heap})
            tick += 1
            self._stop.wait(0.2)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """phase -> measure -> {peak, mean} (MiB)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for phase, samples in self.samples.items():
            out[phase] = {}
            for key in samples[0]:
                values = [s[key] for s in samples if key in s]
                out[phase][key] = {"peak": round(max(values), 1), "mean": round(sum(values) / len(values), 1)}
        return out


async def _abused(wrk: str, url: str, port: int, *, connections: int, duration: int) -> tuple[dict[str, Any], Tally]:
    tally, stop = Tally(), asyncio.Event()
    tasks = start_abusers(port, stop, tally, agent_header=AGENT_HEADER, agent=AGENT)
    await asyncio.sleep(2)  # the abusers are all at it before the measurement starts
    try:
        result = await asyncio.to_thread(allowed_calls, wrk, url, connections=connections, duration=duration)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return result, tally


def markdown(points: dict[str, dict[str, Any]], memory: dict[str, Any]) -> str:
    lines = ["| phase | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|"]
    for phase, r in points.items():
        lat = r["latency_us"]
        errors = r["requests"] - r["rpc_result"]
        lines.append(f"| {phase} | {r['rps']:.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} | {errors}/{r['requests']} |")
    lines += ["", "| phase | Envoy RSS MiB (peak) | Envoy heap allocated MiB (peak) | control plane RSS MiB (peak) |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for phase, m in memory.items():
        lines.append(f"| {phase} | {m['envoy']['peak']:.1f} | {m.get('envoy_allocated', {}).get('peak', 0):.1f} "
                     f"| {m['control_plane']['peak']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=30, help="seconds of wrk per phase (default 30)")
    p.add_argument("--connections", type=int, default=4, help="wrk -c (default 4)")
    p.add_argument("--idle", type=int, default=5, help="seconds of memory at rest (default 5)")
    p.add_argument("--settle", type=int, default=5, help="seconds after the abusers stop (default 5)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-soak-"))
    server = control = None
    envoy: EnvoyProcess | None = None
    sampler: MemorySampler | None = None
    ok = False
    try:
        server, direct_url = start_demo_server(workdir)
        backend_port = int(re.search(r":(\d+)/", direct_url).group(1))  # type: ignore[union-attr]
        listen_port, policy_port, authz_http_port = free_port(HOST), free_port(HOST), free_port(HOST)
        policy_dir = workdir / "policies"
        write_policies(policy_dir, listen_port=listen_port, backend_port=backend_port, policy_port=policy_port,
                       authz_http_port=authz_http_port, ext_authz="http", tokens=None)  # fmt: skip
        control, xds_port = start_control_plane(policy_dir, workdir, policy_port=policy_port,
                                                authz_http_port=authz_http_port, name="control-plane")  # fmt: skip
        envoy = start_envoy(workdir / "envoy", node_id="soak-envoy", gateway=GATEWAY, xds_port=xds_port,
                            listen_port=listen_port)  # fmt: skip
        url = f"http://{HOST}:{listen_port}/mcp/{BACKEND}"
        print(f"gateway {url}; logs in {workdir}", flush=True)
        allowed_calls(wrk, url, connections=args.connections, duration=2)  # warm-up

        sampler = MemorySampler({"envoy": envoy.pid, "control_plane": control.pid}, envoy)
        sampler.start()
        time.sleep(args.idle)
        points: dict[str, dict[str, Any]] = {}
        sampler.phase = "polite"
        points["polite"] = allowed_calls(wrk, url, connections=args.connections, duration=args.duration)
        sampler.phase = "abused"
        points["abused"], tally = asyncio.run(
            _abused(wrk, url, listen_port, connections=args.connections, duration=args.duration)
        )
        sampler.phase = "after"
        time.sleep(args.settle)
        sampler.stop()

        found = {phase: problems("allowed", r) for phase, r in points.items()}
        wrong = unexpected(tally)
        memory = sampler.summary()
        ratio = points["abused"]["rps"] / points["polite"]["rps"] if points["polite"]["rps"] else 0.0
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(wrk),
            "settings": {
                "duration_s": args.duration,
                "connections": args.connections,
                "call": CALL,
                "policies": "policies/demo (default limits)",
                "envoy_concurrency": 1,
            },  # fmt: skip
            "points": {p: {k: v for k, v in r.items() if k != "wrk_output"} for p, r in points.items()},
            "served_ratio_abused_vs_polite": round(ratio, 3),
            "memory_mib": memory,
            "abusers": {name: dict(c) for name, c in sorted(tally.outcomes.items())},
            "problems": {**{p: v for p, v in found.items() if v}, **({"abusers": wrong} if wrong else {})},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(markdown(points, memory))
        print(f"\nallowed calls served under abuse: {ratio:.2f}x the rate at rest; results in {args.out}")
        print("abusers:", json.dumps(result["abusers"]))
        ok = not result["problems"]
        if not ok:
            print(f"FAILED: {result['problems']}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        if sampler is not None and sampler._thread.is_alive():
            sampler.stop()
        if envoy is not None:
            envoy.stop()
        stop_process(control)
        stop_process(server)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
