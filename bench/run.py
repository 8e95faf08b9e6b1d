"""Gateway benchmark: wrk against the MCP server directly and through Envoy, per decision path.

    .venv/bin/python bench/run.py            # or: make bench
    .venv/bin/python bench/run.py --check    # start everything, verify the six paths, stop

One run measures six paths, each at every concurrency level, with wrk and
bench/mcp_call.lua (a 2026-07-28 `tools/call`, no session). Every call
through the gateway is made by an agent identified by a JWT (RS256, in
`x-agent-token`, claim `azp`), the production identity, which Envoy verifies
on every request:

  direct       wrk -> demo MCP server               create_issue {repo: acme/web, title: bench}
  allowed      wrk -> Envoy -> demo MCP server      the same, as planner: granted without
                                                    conditions (Envoy's RBAC alone)
  native-when  wrk -> Envoy -> demo MCP server      the same as triage, under
                                                    `args.repo.startsWith("acme/")`:
                                                    a condition Envoy evaluates itself (CEL)
  python-http  wrk -> Envoy -> policy service       the same as scribe, under a condition
                  (ext_authz, HTTP) -> server       Envoy cannot evaluate (`size()`), so the
                                                    policy service decides (the default
                                                    transport)
  python-grpc  the same as python-http, through a second gateway whose Gateway says
               `policyService.extAuthz: grpc`
  denied       wrk -> Envoy                         delete_repo: granted to nobody; Envoy
                                                    answers a JSON-RPC error (HTTP 200)

Everything it needs it starts itself on 127.0.0.1 and free ports: the demo
server (`python -m xds_server.demo.mcp_server --json-response`, as shipped),
and two gateway stacks, each a control plane with its policy service
(`agentxds serve --policy-port --authz-http-port --approvals-port` on a copy
of policies/demo rewritten to those ports, with the JWT agents and their
rules; default log level, so the decision log is written as in
production) and an Envoy (`EnvoyProcess`, concurrency 1, log level error;
the listener's stdout access log is product config and stays on, written to
the Envoy log file): one with ext_authz over HTTP (every path but
python-grpc), one over gRPC (python-grpc). Each process is stopped by its PID
on exit.

Then the targets' comparisons again, in alternation (`ALTERNATED`, `--rounds`
short points of `--round-duration` seconds, the order turning each round):
allowed, native-when and python-http at one connection, allowed and
python-http at sixteen. The targets are read from the medians of these
rounds, each path against the same round's `allowed`: on a small shared VM
the machine's speed drifts by a fifth within seconds, more than the
differences measured, and sequential 10 s points compare two speeds.

Results: Markdown tables on stdout and bench/results/latest.json. Ratios are
gateway / direct for throughput and gateway minus direct for latency, from
the same run, plus each conditional path against `allowed` (what the
condition adds to a native decision), and the CPU time each process spent
per call (from /proc, over the measured seconds). A run fails (exit 1) when
a path does not answer as expected: any non-2xx or JSON-RPC error on
direct/allowed/native-when/python-*, anything but 200 + JSON-RPC error on
denied, any socket error, upstream requests during a denied run, python-*
requests that Envoy did not send to ext_authz (its `ext_authz.*` counters) or
allowed/native-when/denied requests that it did.
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess, find_envoy_binary
from xds_server.runtime.ports import free_port, wait_for_port
from xds_server.runtime.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA_SCRIPT = BENCH / "mcp_call.lua"
POLICY_SRC = ROOT / "policies" / "demo"
DEFAULT_OUT = BENCH / "results" / "latest.json"

HOST = "127.0.0.1"
GATEWAY = "demo"  # the Gateway in policies/demo, also the Envoy node cluster
BACKEND = "github"
PLAIN_AGENT = "planner"  # allowed: the tool granted without conditions
AGENT = "triage"  # native-when, denied
PYTHON_AGENT = "scribe"  # python-*: the same tool under a condition only the policy service evaluates
BENCH_AGENTS = (PLAIN_AGENT, AGENT, PYTHON_AGENT)
ISSUER, AUDIENCE = "https://agents.bench.agentxds", "agentxds-bench"
TOKEN_HEADER = "x-agent-token"

# The rules added to the policy copy. The same tool for all three, so the backend's work is the same.
PLAIN_RULE = {"description": "bench: planner opens issues anywhere", "agents": [PLAIN_AGENT], "tools": ["create_issue"]}
NATIVE_RULE = {
    "description": "bench: triage opens issues in acme/ repositories only (Envoy evaluates the condition)",
    "agents": [AGENT],
    "tools": ["create_issue"],
    "when": 'args.repo.startsWith("acme/")',
}
PYTHON_RULE = {
    "description": "bench: scribe likewise, but size() keeps the condition with the policy service",
    "agents": [PYTHON_AGENT],
    "tools": ["create_issue"],
    "when": 'args.repo.startsWith("acme/") && args.repo.size() < 100',
}

ISSUE = {"repo": "acme/web", "title": "bench"}
# path -> (tool, arguments, agent whose JWT is sent; None: no identity). Every path but denied sends the
# same request (create_issue formats a string from its arguments in the demo server), so allowed - direct
# is the gateway alone and each conditional path - allowed is what its condition adds.
CALLS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "direct": ("create_issue", ISSUE, None),
    "allowed": ("create_issue", ISSUE, PLAIN_AGENT),
    "native-when": ("create_issue", ISSUE, AGENT),
    "python-http": ("create_issue", ISSUE, PYTHON_AGENT),
    "python-grpc": ("create_issue", ISSUE, PYTHON_AGENT),
    "denied": ("delete_repo", {"repo": "acme/web"}, AGENT),
}
# Checked once before measuring, not measured: the conditions refuse these.
REFUSED = {"native-when": ("create_issue", {"repo": "evil/web", "title": "bench"}, AGENT),
           "python-http": ("create_issue", {"repo": "evil/web", "title": "bench"}, PYTHON_AGENT)}  # fmt: skip

PATHS = ("direct", "allowed", "native-when", "python-http", "python-grpc", "denied")
GATEWAY_PATHS = PATHS[1:]
PYTHON_PATHS = ("python-http", "python-grpc")  # decided by the policy service (HTTP, gRPC)
NATIVE_PATHS = ("allowed", "native-when", "denied")  # never reach the policy service
CONDITION_PATHS = ("native-when", *PYTHON_PATHS)  # compared with `allowed`
GRPC_STACK_PATHS = ("python-grpc",)  # served by the second stack (extAuthz: grpc)
TARGETS = {  # at one connection, p50 added over `allowed`; and python-http's throughput at 16 connections
    "native-when_added_p50_ms": 0.1,
    "python-http_added_p50_ms": 1.0,
    "python-http_throughput_ratio_c16": 0.75,
}
#: The targets are read from paths measured in alternation (connections -> the paths, `allowed` first):
#: short points, the order turning each round, so that the machine's drift between two sequential
#: points (this 2-vCPU VM's speed moves by 20 % within seconds) does not decide a comparison.
ALTERNATED = {1: ("allowed", "native-when", "python-http"), 16: ("allowed", "python-http")}
STARTUP_TIMEOUT_S = 30.0
WRK_GRACE_S = 20.0  # beyond -d, before a wrk run is killed


class Tokens:
    """An RS256 key, its JWKS and the agents' tokens (valid for the run)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        self.tokens = {agent: pyjwt.encode({"iss": ISSUER, "aud": AUDIENCE, "azp": agent, "iat": now, "exp": now + 7200},
                                           self.key, algorithm="RS256", headers={"kid": "bench"})
                       for agent in BENCH_AGENTS}  # fmt: skip

    def jwks(self) -> str:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "RS256", "use": "sig"}]})

    def header(self, agent: str | None) -> dict[str, str]:
        return {TOKEN_HEADER: self.tokens[agent]} if agent is not None else {}


# -- processes -----------------------------------------------------------------


# The demo server exactly as `agentxds up --demo` runs it, plus JSON answers.
SERVER_COMMAND = [sys.executable, "-m", "xds_server.demo.mcp_server", "--host", HOST, "--port", "0",
                  "--path", "/mcp", "--json-response"]  # fmt: skip


def start_server(argv: list[str], workdir: Path, name: str, what: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server that prints `READY <url>` (its stderr in `workdir/<name>.err`); return it and the URL."""
    err = workdir / f"{name}.err"
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err.open("wb"),
                            start_new_session=True)  # fmt: skip
    return proc, ready_url(proc, err, what)


def start_demo_server(workdir: Path, name: str | None = None,
                      extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    """Start the demo MCP server on a kernel-chosen port (`whoami` says `name`, if given; `extra`
    arguments after the shipped ones); return it and its URL (from the READY line)."""
    argv = SERVER_COMMAND + (["--name", name] if name else []) + list(extra)
    return start_server(argv, workdir, f"demo-mcp-{name}" if name else "demo-mcp", f"demo MCP server {name or ''}")


def start_envoy(workdir: Path, *, node_id: str, gateway: str, xds_port: int, listen_port: int) -> EnvoyProcess:
    """One Envoy (1 worker, log level error) for `gateway` from the control plane on `xds_port`, live and
    accepting on `listen_port`; stopped again if it does not get there."""
    bootstrap = render_bootstrap(node_id=node_id, node_cluster=gateway, xds_host=HOST, xds_port=xds_port, admin_port=0)
    envoy = EnvoyProcess(bootstrap, workdir=workdir, log_level="error", concurrency=1).start()
    try:
        envoy.wait_live(timeout=STARTUP_TIMEOUT_S)
        wait_for_port(HOST, listen_port, timeout=STARTUP_TIMEOUT_S)
    except BaseException:
        envoy.stop()
        raise
    return envoy


def ready_url(proc: subprocess.Popen[bytes], err: Path, what: str) -> str:
    """The URL a started server prints on its READY line (stdout drained after it, so the server never
    blocks on a full pipe); stops it and raises when it exits or STARTUP_TIMEOUT_S passes first."""
    found: list[str] = []

    def read_ready() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("READY "):
                found.append(line.split(" ", 1)[1])
                break
        for _ in proc.stdout:
            pass

    threading.Thread(target=read_ready, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{what} did not print READY; see {err}")
        time.sleep(0.02)
    return found[0]


def write_policies(dest: Path, *, listen_port: int, backend_port: int, policy_port: int, authz_http_port: int,
                   ext_authz: str, tokens: Tokens | None) -> None:  # fmt: skip
    """Copy policies/demo into `dest`: listener, backend endpoint and policy service moved to the given
    ports (ext_authz over `ext_authz`) and, with `tokens`, the agents planner, triage and scribe
    identified by JWT and the three rules added to the backend's MCPPolicy (without: the demo's
    agents and rules as shipped)."""
    dest.mkdir(parents=True, exist_ok=True)
    added = False
    for src in sorted(POLICY_SRC.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(src.read_text()) if d]
        for doc in docs:
            spec = doc.get("spec", {})
            if doc.get("kind") == "Gateway":
                spec["listen"] = {"address": HOST, "port": listen_port}
                spec["policyService"] = {"host": HOST, "port": policy_port, "extAuthz": ext_authz,
                                         "extAuthzHttpPort": authz_http_port}  # fmt: skip
            elif doc.get("kind") == "MCPBackend":
                spec["endpoints"] = [{"host": HOST, "port": backend_port}]
            if tokens is None:
                continue
            if doc.get("kind") == "Gateway":
                identity = spec.setdefault("identity", {})
                identity["jwtProviders"] = [{"name": "agents", "issuer": ISSUER, "audiences": [AUDIENCE],
                                             "tokenHeader": TOKEN_HEADER, "jwks": {"inline": tokens.jwks()}}]  # fmt: skip
            elif doc.get("kind") == "Agent" and doc["metadata"]["name"] in BENCH_AGENTS:
                spec["identity"] = {"jwt": {"provider": "agents", "claim": "azp", "value": doc["metadata"]["name"]}}
            elif doc.get("kind") == "MCPPolicy" and spec.get("backend") == BACKEND:
                spec.setdefault("rules", []).extend([dict(PLAIN_RULE), dict(NATIVE_RULE), dict(PYTHON_RULE)])
                added = True
        if src.name == "agents.yaml" and tokens is not None:
            docs += [{"apiVersion": "agentxds.dev/v1", "kind": "Agent", "metadata": {"name": name},
                      "spec": {"identity": {"jwt": {"provider": "agents", "claim": "azp", "value": name}}}}
                     for name in (PLAIN_AGENT, PYTHON_AGENT)]  # fmt: skip
        (dest / src.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    if tokens is not None and not added:
        raise RuntimeError(f"no MCPPolicy for backend {BACKEND!r} in {POLICY_SRC} to add the bench rules to")


def start_control_plane(policy_dir: Path, workdir: Path, *, policy_port: int, authz_http_port: int,
                        name: str) -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
    """`agentxds serve` (control plane + policy service) at the default log level; return it and its ADS port."""
    port = free_port(HOST)
    approvals_port = free_port(HOST)
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xds_server.cli", "serve", str(policy_dir), "--host", HOST, "--port", str(port),
         "--policy-port", str(policy_port), "--authz-http-port", str(authz_http_port),
         "--approvals-port", str(approvals_port)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(HOST, port, timeout=STARTUP_TIMEOUT_S)
        wait_for_port(HOST, policy_port, timeout=STARTUP_TIMEOUT_S)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"control plane did not listen; see {workdir / f'{name}.log'}") from None
    return proc, port


# -- checks --------------------------------------------------------------------


def mcp_call(url: str, call: tuple[str, dict[str, Any], str | None], tokens: Tokens) -> tuple[int, dict[str, Any]]:
    """One request exactly like bench/mcp_call.lua sends; return (status, JSON body)."""
    tool, arguments, agent = call
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m, url
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments,
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities": {}}},
    }  # fmt: skip
    headers = {
        "content-type": "application/json", "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": tool, **tokens.header(agent),
    }  # fmt: skip
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=10)
    try:
        conn.request("POST", m.group(3), body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def check_paths(urls: dict[str, str], envoys: dict[str, EnvoyProcess], tokens: Tokens) -> dict[str, Any]:
    """Verify each path answers as the benchmark expects, before measuring it; plus one call each
    condition refuses (200, -32003, reason condition_not_met, backend not reached; the native one
    without asking the policy service)."""
    out: dict[str, Any] = {}
    checks = [(path, path, CALLS[path]) for path in PATHS]
    checks += [(f"refused ({path})", path, call) for path, call in REFUSED.items()]
    for name, path, call in checks:
        envoy = envoys[path]
        before = counters(envoy)
        status, body = mcp_call(urls[path], call, tokens)
        delta = {k: v - before[k] for k, v in counters(envoy).items()}
        out[name] = {"status": status, "body": body, "counters": delta}
        error = body.get("error") if isinstance(body, dict) else None
        if path == "denied":
            ok = status == 200 and isinstance(error, dict) and delta["upstream"] == 0 and delta["ext_authz"] == 0
        elif name.startswith("refused"):
            ok = (status == 200 and isinstance(error, dict) and error.get("code") == -32003
                  and (error.get("data") or {}).get("reason") == "condition_not_met" and delta["upstream"] == 0
                  and delta["ext_authz_denied"] == (1 if path in PYTHON_PATHS else 0))  # fmt: skip
        else:
            ok = status == 200 and isinstance(body, dict) and "result" in body and not body["result"].get("isError")
            if path in NATIVE_PATHS:
                ok = ok and delta["ext_authz"] == 0 and delta["upstream"] == 1
            elif path in PYTHON_PATHS:
                ok = ok and delta["ext_authz"] == 1 and delta["upstream"] == 1
        if not ok:
            raise RuntimeError(f"{name}: unexpected answer {status} {body!r} (Envoy counters {delta}); "
                               f"logs in {envoy.workdir}")  # fmt: skip
        print(f"check {name:<22} {status} {json.dumps(body)[:100]}", flush=True)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(envoy: EnvoyProcess) -> dict[str, int]:
    """Requests Envoy has sent to the backend's cluster(s), and ext_authz decisions, so far."""
    stats = envoy.stats()
    total = {"upstream": 0, "ext_authz": 0, "ext_authz_denied": 0}
    for k, v in stats.items():
        if k.endswith(".upstream_rq_total") and BACKEND in k:
            total["upstream"] += int(v)
        # http.<prefix>.ext_authz.*, once per decision (Envoy also counts it under cluster.<target>.ext_authz.*)
        elif (
            k.startswith("http.")
            and ".ext_authz." in k
            and k.endswith((".ok", ".denied", ".error", ".failure_mode_allowed"))
        ):
            total["ext_authz"] += int(v)
            if k.endswith(".denied"):
                total["ext_authz_denied"] += int(v)
    return total


# -- wrk -----------------------------------------------------------------------


def bench_json(returncode: int | None, stdout: str, stderr: str) -> dict[str, Any]:
    """The figures a wrk script's `BENCH_JSON` line gives (bench/wrk_common.lua), with `rps`; raises when
    wrk failed or printed none."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({returncode}): {stderr.strip() or stdout.strip()}")
    data: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
    return data


def wrk_run(wrk: str, url: str, script: Path, args: list[str], *, connections: int,
            seconds: int) -> tuple[dict[str, Any], str]:  # fmt: skip
    """One wrk run (1 thread, `connections`, `seconds`, latency) of `script` with `args`: (its figures, its text)."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", "-s", str(script),
            url, "--", *args]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + WRK_GRACE_S)
    return bench_json(proc.returncode, proc.stdout, proc.stderr), proc.stdout


def run_wrk(wrk: str, url: str, call: tuple[str, dict[str, Any], str | None], tokens: Tokens, *, connections: int,
            duration: int) -> dict[str, Any]:  # fmt: skip
    tool, arguments, agent = call
    header = f"{TOKEN_HEADER}: {tokens.tokens[agent]}" if agent is not None else ""
    data, output = wrk_run(wrk, url, LUA_SCRIPT, [tool, "-", json.dumps(arguments, separators=(",", ":")), header],
                           connections=connections, seconds=duration)  # fmt: skip
    # Cross-check against wrk's own text output.
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    data["rps_wrk"] = float(m.group(1)) if m else None
    data["wrk_output"] = output
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
    counted = r.get("counters", {})
    if path == "denied":
        if r["status_2xx"] != n or r["rpc_error"] != n:
            out.append(f"expected {n} x 200 + JSON-RPC error, got 2xx={r['status_2xx']} rpc_error={r['rpc_error']}")
        if counted.get("upstream", 0):
            out.append(f"{counted['upstream']} requests reached the backend")
    elif r["status_2xx"] != n or r["rpc_result"] != n:
        out.append(f"expected {n} x 200 + result, got 2xx={r['status_2xx']} result={r['rpc_result']} "
                   f"rpc_error={r['rpc_error']}")  # fmt: skip
    # wrk stops mid-request at the deadline, so Envoy may count a few more than wrk completed.
    if path in PYTHON_PATHS and not n <= counted.get("ext_authz", 0) <= n + 64:
        out.append(f"{n} requests but {counted.get('ext_authz', 0)} ext_authz decisions")
    if path in NATIVE_PATHS and counted.get("ext_authz", 0):
        out.append(f"{counted['ext_authz']} requests went to ext_authz")
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


def added(g: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """g against base: throughput ratio and added latency (ms) at p50, p90, p99."""
    return {
        "throughput_ratio": g["rps"] / base["rps"] if base["rps"] else None,
        **{f"added_{q}_ms": (g["latency_us"][q] - base["latency_us"][q]) / 1000 for q in ("p50", "p90", "p99")},
    }


def summarize(points: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per concurrency: each gateway path against direct, and each conditional path against allowed."""
    ratios: dict[str, Any] = {}
    for c, by_path in points.items():
        row = {f"{path}_vs_direct": added(by_path[path], by_path["direct"]) for path in GATEWAY_PATHS}
        for path in CONDITION_PATHS:
            row[f"{path}_vs_allowed"] = added(by_path[path], by_path["allowed"])
        ratios[str(c)] = row
    return ratios


def alternated_summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each path of alternated rounds against the same round's `allowed`: the median over rounds, and
    the lowest and highest round."""
    out: dict[str, Any] = {}
    for path in rounds[0]:
        if path == "allowed":
            continue
        ratios = [r[path]["rps"] / r["allowed"]["rps"] for r in rounds if r["allowed"]["rps"]]
        added_p50 = [(r[path]["latency_us"]["p50"] - r["allowed"]["latency_us"]["p50"]) / 1000 for r in rounds]
        out[path] = {
            "throughput_ratio": statistics.median(ratios) if ratios else None,
            "throughput_ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "added_p50_ms": statistics.median(added_p50),
            "added_p50_ms_range": [min(added_p50), max(added_p50)],
        }
    return out


def verdict(alternated: dict[str, Any]) -> dict[str, Any]:
    """The targets, read from the alternated rounds' medians, and whether each is met (None: not measured)."""
    out: dict[str, Any] = {}
    one, sixteen = alternated.get("1", {}).get("vs_allowed"), alternated.get("16", {}).get("vs_allowed")
    for path in ("native-when", "python-http"):
        target = TARGETS[f"{path}_added_p50_ms"]
        value = one[path]["added_p50_ms"] if one else None
        out[f"{path}_added_p50_ms"] = {"target": target, "value": value,
                                       "met": None if value is None else value <= target}  # fmt: skip
    target = TARGETS["python-http_throughput_ratio_c16"]
    value = sixteen["python-http"]["throughput_ratio"] if sixteen else None
    out["python-http_throughput_ratio_c16"] = {"target": target, "value": value,
                                               "met": None if value is None else value >= target}  # fmt: skip
    return out


def markdown(points: dict[int, dict[str, dict[str, Any]]], ratios: dict[str, Any]) -> str:
    lines = [
        "| path | conns | req/s | p50 ms | p99 ms | Envoy CPU µs/call | policy service CPU µs/call | non-2xx | "
        "JSON-RPC errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, by_path in points.items():
        for path in PATHS:
            r = by_path[path]
            lat, cpu = r["latency_us"], r.get("cpu_us_per_call", {})
            non2xx = r["requests"] - r["status_2xx"]
            envoy_cpu = f"{cpu['envoy']:.0f}" if "envoy" in cpu else "-"
            python_cpu = f"{cpu['policy_service']:.0f}" if "policy_service" in cpu else "-"
            lines.append(f"| {path} | {c} | {r['rps']:.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} | {envoy_cpu} | "
                         f"{python_cpu} | {non2xx}/{r['requests']} | {r['rpc_error']}/{r['requests']} |")  # fmt: skip
    lines += [
        "",
        "| conns | vs | req/s ratio | +p50 ms | +p90 ms | +p99 ms |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for c, row in ratios.items():
        keys = [(f"{p}_vs_direct", f"{p} / direct") for p in GATEWAY_PATHS]
        keys += [(f"{p}_vs_allowed", f"{p} / allowed") for p in CONDITION_PATHS]
        for key, label in keys:
            a = row[key]
            lines.append(f"| {c} | {label} | {a['throughput_ratio']:.2f} | {a['added_p50_ms']:+.2f} "
                         f"| {a['added_p90_ms']:+.2f} | {a['added_p99_ms']:+.2f} |")  # fmt: skip
    return "\n".join(lines)


def alternated_markdown(alternated: dict[str, Any]) -> str:
    lines = ["| conns | vs | rounds | req/s ratio: median (lowest-highest) | +p50 ms: median (lowest-highest) |",
             "|---:|---|---:|---|---|"]  # fmt: skip
    for c, data in alternated.items():
        for path, a in data["vs_allowed"].items():
            low, high = a["throughput_ratio_range"]
            p_low, p_high = a["added_p50_ms_range"]
            lines.append(f"| {c} | {path} / allowed | {len(data['rounds'])} | {a['throughput_ratio']:.2f} "
                         f"({low:.2f}-{high:.2f}) | {a['added_p50_ms']:+.2f} ({p_low:+.2f} to {p_high:+.2f}) |")  # fmt: skip
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured point (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per path (default 3)")
    p.add_argument("--connections", default="1,4,16", help="comma-separated wrk -c levels (default 1,4,16)")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT.relative_to(ROOT)})"
    )
    p.add_argument("--rounds", type=int, default=8,
                   help="alternated rounds the targets are read from (default 8; 0: none)")  # fmt: skip
    p.add_argument("--round-duration", type=int, default=3, help="seconds per path per round (default 3)")
    p.add_argument("--check", action="store_true", help="only start everything and verify the six paths")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with the logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(c) for c in args.connections.split(",") if c.strip()]
    budget = len(levels) * len(PATHS) * (args.duration + 1) + len(PATHS) * (args.warmup + 1)
    budget += args.rounds * sum(len(paths) for paths in ALTERNATED.values()) * (args.round_duration + 1)
    if budget > 600:
        raise SystemExit(f"this run would take about {budget}s; keep it under 600s")
    wrk = shutil.which("wrk")
    if wrk is None and not args.check:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk; macOS: brew install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="agentxds-bench-"))
    server: subprocess.Popen[bytes] | None = None
    controls: dict[str, subprocess.Popen[bytes]] = {}  # "http" | "grpc" -> its control plane + policy service
    stacks: dict[str, EnvoyProcess] = {}  # "http" | "grpc" -> its Envoy
    tokens = Tokens()
    failed = False
    finished = False  # logs are kept when the run raised or failed
    try:
        server, direct_url = start_demo_server(workdir)
        backend_port = int(re.search(r":(\d+)/", direct_url).group(1))  # type: ignore[union-attr]
        gateway_urls: dict[str, str] = {}
        for transport in ("http", "grpc"):
            listen_port, policy_port, authz_http_port = free_port(HOST), free_port(HOST), free_port(HOST)
            policy_dir = workdir / f"policies-{transport}"
            write_policies(policy_dir, listen_port=listen_port, backend_port=backend_port, policy_port=policy_port,
                           authz_http_port=authz_http_port, ext_authz=transport, tokens=tokens)  # fmt: skip
            control, xds_port = start_control_plane(policy_dir, workdir, policy_port=policy_port,
                                                    authz_http_port=authz_http_port, name=f"control-plane-{transport}")  # fmt: skip
            controls[transport] = control
            stacks[transport] = start_envoy(workdir / f"envoy-{transport}", node_id=f"bench-envoy-{transport}",
                                            gateway=GATEWAY, xds_port=xds_port, listen_port=listen_port)  # fmt: skip
            gateway_urls[transport] = f"http://{HOST}:{listen_port}/mcp/{BACKEND}"

        def stack(path: str) -> str:
            return "grpc" if path in GRPC_STACK_PATHS else "http"

        urls = {"direct": direct_url, **{path: gateway_urls[stack(path)] for path in GATEWAY_PATHS}}
        envoys = {path: stacks[stack(path)] for path in PATHS}
        print(f"direct  {direct_url}\ngateway {gateway_urls['http']} (ext_authz over HTTP)\n"
              f"gateway {gateway_urls['grpc']} (ext_authz over gRPC)\nlogs    {workdir}", flush=True)  # fmt: skip
        checks = check_paths(urls, envoys, tokens)
        if args.check:
            finished = True
            return 0
        assert wrk is not None

        info = machine_info(wrk)
        print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}; envoy {info['envoy']}; {info['wrk']}", flush=True)
        load_before = os.getloadavg()
        started = time.monotonic()
        for path in PATHS:  # warm-up: connections, Python imports/caches, Envoy's upstream and gRPC pools
            run_wrk(wrk, urls[path], CALLS[path], tokens, connections=max(levels), duration=args.warmup)
        print(f"warm-up done ({time.monotonic() - started:.0f}s)", flush=True)

        def measure(path: str, c: int, seconds: int, label: str) -> dict[str, Any]:
            nonlocal failed
            pids = {"server": server.pid}
            if path != "direct":
                pids |= {"envoy": envoys[path].pid, "policy_service": controls[stack(path)].pid}
            before, cpu_before = counters(envoys[path]), {k: cpu_seconds(v) for k, v in pids.items()}
            r = run_wrk(wrk, urls[path], CALLS[path], tokens, connections=c, duration=seconds)
            r["counters"] = {k: v - before[k] for k, v in counters(envoys[path]).items()}
            r["cpu_us_per_call"] = {k: (cpu_seconds(v) - cpu_before[k]) * 1e6 / max(1, r["requests"])
                                    for k, v in pids.items()}  # fmt: skip
            r["problems"] = problems(path, r)
            failed = failed or bool(r["problems"])
            lat = r["latency_us"]
            cpu = r["cpu_us_per_call"]
            print(f"{label}c={c:<3} {path:<12} {r['rps']:8.0f} req/s  p50 {ms(lat['p50'])} ms  p99 {ms(lat['p99'])} ms  "
                  f"cpu/call envoy {cpu.get('envoy', 0):.0f} us, policy service {cpu.get('policy_service', 0):.0f} us"
                  + (f"  PROBLEMS: {'; '.join(r['problems'])}" if r["problems"] else ""), flush=True)  # fmt: skip
            return r

        points: dict[int, dict[str, dict[str, Any]]] = {}
        for c in levels:
            points[c] = {path: measure(path, c, args.duration, "") for path in PATHS}
        alternated: dict[str, Any] = {}
        for c, compared in ALTERNATED.items() if args.rounds > 0 else ():
            rounds = []
            for i in range(args.rounds):
                order = compared[i % len(compared) :] + compared[: i % len(compared)]
                measured = {path: measure(path, c, args.round_duration, f"round {i + 1}: ") for path in order}
                rounds.append({path: {"rps": m["rps"], "latency_us": m["latency_us"],
                                      "cpu_us_per_call": m["cpu_us_per_call"]} for path, m in measured.items()})  # fmt: skip
            alternated[str(c)] = {"rounds": rounds, "vs_allowed": alternated_summary(rounds)}
        elapsed = time.monotonic() - started

        ratios = summarize(points)
        target = verdict(alternated)
        envoy_log_bytes = sum(e.log_path.stat().st_size for e in stacks.values() if e.log_path.exists())
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": info,
            "settings": {
                "duration_s": args.duration,
                "rounds": args.rounds,
                "round_duration_s": args.round_duration,
                "alternated": {str(c): list(paths) for c, paths in ALTERNATED.items()},
                "warmup_s": args.warmup,
                "connections": levels,
                "wrk_threads": 1,
                "envoy_concurrency": 1,
                "envoy_log_level": "error",
                "access_log": "stdout, to the Envoy log file",
                "server": "python -m xds_server.demo.mcp_server --json-response, uvicorn, one process",
                "policy_service": "agentxds serve (control plane + policy service, one process per stack), "
                "default log level (decision log on)",
                "stacks": {
                    "http": "allowed, native-when, python-http, denied (extAuthz: http, the default)",
                    "grpc": "python-grpc (extAuthz: grpc)",
                },
                "identity": f"JWT (RS256) in {TOKEN_HEADER}, claim azp, verified by Envoy on every request",
                "calls": {path: {"tool": t, "arguments": a, "agent": g} for path, (t, a, g) in CALLS.items()},
                "rules": [PLAIN_RULE, NATIVE_RULE, PYTHON_RULE],
            },  # fmt: skip
            "checks": checks,
            "points": {str(c): by_path for c, by_path in points.items()},
            "ratios": ratios,
            "alternated": alternated,
            "target": target,
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
        print()
        print(alternated_markdown(alternated))
        print(f"\nratios: path / base (req/s), path - base (latency); results in {args.out}")
        print("targets: the medians of the alternated rounds (the second table)")
        for name, t in target.items():
            met = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
            value = "-" if t["value"] is None else f"{t['value']:.3f}"
            print(f"target {name}: {value} (target {t['target']}): {met}")
        print(
            f"load average before {load_before[0]:.2f}, after {result['loadavg_after'][0]:.2f} "
            f"(the benchmark itself keeps about 2 busy); Envoy log (access log) {envoy_log_bytes} bytes"
        )
        if failed:
            print(
                f"FAILED: some points did not answer as expected (see PROBLEMS above); logs in {workdir}",
                file=sys.stderr,
            )
        finished = True
        return 1 if failed else 0
    finally:
        for envoy in stacks.values():
            envoy.stop()
        for control in controls.values():
            stop_process(control)
        stop_process(server)
        if finished and not failed and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
