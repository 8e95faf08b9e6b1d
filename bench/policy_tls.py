"""What TLS to the policy service costs: the python-http path with the hop in plain HTTP and over mTLS.

    .venv/bin/python bench/policy_tls.py            # or: make bench-policy-tls
    .venv/bin/python bench/policy_tls.py --rounds 8 --round-duration 3

Two gateway stacks on the same demo MCP server, as bench/run.py builds them
(JWT agents, the python-http rule: a condition Envoy cannot evaluate, decided
by the policy service over ext_authz HTTP): one as shipped, one whose Gateway
has `policyService.tls` (the service's CA, Envoy's client certificate) and
whose `agentxds serve` has `--policy-tls-cert/-key/-client-ca`, with a CA and
certificates minted for the run. Alternated rounds of wrk at 1 and 16
connections on the python-http path of each stack (the order turning each
round, each TLS round against the same round's plain one); reported: medians
of req/s, p50, p99 and CPU per call (Envoy, policy service), and the ratio
and p50 difference per round. Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import run as bench  # bench/run.py: the same stacks, checks and wrk runner as make bench
import yaml

from xds_server.cli import pki
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port, wait_for_port
from xds_server.runtime.processes import stop_process

PATH = "python-http"


def _mint(directory: Path) -> dict[str, Path]:
    """`agentxds certs`'s development PKI: the CA, the service's certificate (127.0.0.1), Envoy's."""
    made = pki.write_dev_pki(directory, trust_domain="bench.example", agents=["envoy"])
    _, envoy_cert, envoy_key = made.agents["envoy"]
    return {"ca.crt": made.ca_cert, "service.crt": made.gateway_cert, "service.key": made.gateway_key,
            "envoy.crt": envoy_cert, "envoy.key": envoy_key}  # fmt: skip


def _with_tls(policy_dir: Path, certs: dict[str, Path]) -> None:
    """Give the Gateway in `policy_dir` its `policyService.tls`."""
    for file in policy_dir.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d]
        for doc in docs:
            if doc.get("kind") == "Gateway":
                doc["spec"]["policyService"]["tls"] = {"caFile": str(certs["ca.crt"]),
                                                       "certificateFile": str(certs["envoy.crt"]),
                                                       "privateKeyFile": str(certs["envoy.key"])}  # fmt: skip
        file.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _stack(workdir: Path, name: str, backend_port: int, tokens: bench.Tokens,
           certs: dict[str, Path] | None) -> tuple[subprocess.Popen[bytes], EnvoyProcess, str]:  # fmt: skip
    listen_port, policy_port, authz_port, xds_port = (free_port(bench.HOST) for _ in range(4))
    policy_dir = workdir / f"policies-{name}"
    bench.write_policies(policy_dir, listen_port=listen_port, backend_port=backend_port, policy_port=policy_port,
                         authz_http_port=authz_port, ext_authz="http", tokens=tokens)  # fmt: skip
    tls_args: list[str] = []
    if certs is not None:
        _with_tls(policy_dir, certs)
        tls_args = ["--policy-tls-cert", str(certs["service.crt"]), "--policy-tls-key", str(certs["service.key"]),
                    "--policy-tls-client-ca", str(certs["ca.crt"])]  # fmt: skip
    log = (workdir / f"control-plane-{name}.log").open("wb")
    control = subprocess.Popen(
        [sys.executable, "-m", "xds_server.cli", "serve", str(policy_dir), "--host", bench.HOST, "--port",
         str(xds_port), "--policy-port", str(policy_port), "--authz-http-port", str(authz_port), "--approvals-port",
         str(free_port(bench.HOST)), "--state-dir", str(workdir / f"state-{name}"), *tls_args],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(bench.HOST, xds_port, timeout=bench.STARTUP_TIMEOUT_S)
    except TimeoutError:
        stop_process(control)
        raise RuntimeError(f"control plane {name} did not listen; see {log.name}") from None
    envoy = bench.start_envoy(workdir / f"envoy-{name}", node_id=f"bench-tls-{name}", gateway=bench.GATEWAY,
                              xds_port=xds_port, listen_port=listen_port)  # fmt: skip
    return control, envoy, f"http://{bench.HOST}:{listen_port}/mcp/{bench.BACKEND}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="alternated rounds per connection count (default 8)")
    parser.add_argument("--round-duration", type=int, default=3, help="seconds per stack per round (default 3)")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-bench-tls-"))
    tokens = bench.Tokens()
    started: list[subprocess.Popen[bytes]] = []
    envoys: dict[str, EnvoyProcess] = {}
    controls: dict[str, subprocess.Popen[bytes]] = {}
    try:
        server, direct_url = bench.start_demo_server(workdir)
        started.append(server)
        backend_port = int(re.search(r":(\d+)/", direct_url).group(1))  # type: ignore[union-attr]
        certs = _mint(workdir / "pki")
        urls = {}
        for name, tls in (("plain", None), ("tls", certs)):
            controls[name], envoys[name], urls[name] = _stack(workdir, name, backend_port, tokens, tls)
        for name, url in urls.items():
            status, body = bench.mcp_call(url, bench.CALLS[PATH], tokens)
            if status != 200 or "result" not in body:
                raise SystemExit(f"{name}: {PATH} answered {status} {body}")
            bench.run_wrk(wrk, url, bench.CALLS[PATH], tokens, connections=16, duration=3)  # warm-up
        print("| conns | hop | req/s | p50 ms | p99 ms | Envoy CPU µs/call | policy service CPU µs/call |\n"
              "|---:|---|---:|---:|---:|---:|---:|")  # fmt: skip
        summary = []
        for connections in (1, 16):
            rows: dict[str, list[dict[str, Any]]] = {"plain": [], "tls": []}
            for i in range(args.rounds):
                for name in ("plain", "tls") if i % 2 == 0 else ("tls", "plain"):
                    pids = {"envoy": envoys[name].pid, "service": controls[name].pid}
                    before = {k: bench.cpu_seconds(p) for k, p in pids.items()}
                    counted = bench.counters(envoys[name])
                    r = bench.run_wrk(wrk, urls[name], bench.CALLS[PATH], tokens, connections=connections,
                                      duration=args.round_duration)  # fmt: skip
                    # Every call decided by the policy service (ext_authz), none failed: what problems() checks.
                    r["counters"] = {k: v - counted[k] for k, v in bench.counters(envoys[name]).items()}
                    if problems := bench.problems(PATH, r):
                        raise SystemExit(f"{name}: {'; '.join(problems)}")
                    calls = max(1, r["requests"])
                    rows[name].append({"rps": r["rps"], "p50": r["latency_us"]["p50"] / 1000,
                                       "p99": r["latency_us"]["p99"] / 1000,
                                       **{k: (bench.cpu_seconds(p) - before[k]) * 1e6 / calls for k, p in pids.items()}})  # fmt: skip
            for name, measured in rows.items():
                med = {k: statistics.median(m[k] for m in measured) for k in measured[0]}
                print(f"| {connections} | {name} | {med['rps']:.0f} | {med['p50']:.2f} | {med['p99']:.2f} | "
                      f"{med['envoy']:.0f} | {med['service']:.0f} |")  # fmt: skip
            ratios = [t["rps"] / p["rps"] for p, t in zip(rows["plain"], rows["tls"], strict=True)]
            added = [t["p50"] - p["p50"] for p, t in zip(rows["plain"], rows["tls"], strict=True)]
            summary.append(f"{connections} connection(s): TLS / plain req/s {statistics.median(ratios):.2f} "
                           f"({min(ratios):.2f}-{max(ratios):.2f}), p50 {statistics.median(added):+.2f} ms "
                           f"({min(added):+.2f} to {max(added):+.2f}), medians of {args.rounds} rounds")  # fmt: skip
        print("\n" + "\n".join(summary))
        return 0
    finally:
        for envoy in envoys.values():
            envoy.stop()
        for control in controls.values():
            stop_process(control)
        for proc in started:
            stop_process(proc)
        print(f"logs in {workdir}")


if __name__ == "__main__":
    sys.exit(main())
