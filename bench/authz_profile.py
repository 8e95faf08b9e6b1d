"""Where the ext_authz path's added latency goes: the decision, or the hop to it?

    .venv/bin/python bench/authz_profile.py              # about 3 minutes
    .venv/bin/python bench/authz_profile.py --rounds 5   # more rounds, less noise (about 7 minutes)

Three measurements, all on the same machine as bench/run.py:

1. In process, no network: what one decision costs in Python (parse the
   CheckRequest, `check_call` with its CEL condition, the decision-log
   record, build the CheckResponse; and the HTTP adapter's whole body),
   timed with `timeit` against the same policy copy bench/run.py uses.
2. Through Envoy, one connection (wrk -c1), the native `allowed` path against
   the `authz` path, with five different ext_authz servers behind the
   Gateway's `policyService`: the real policy service (`agentxds serve`) over
   gRPC and over HTTP (`extAuthz: http`), and three no-op servers that answer
   OK without looking at the request (grpc.aio, like the policy service; the
   thread-pool grpc server; raw asyncio HTTP/1.1). If a no-op server adds as
   much as the real one, the time is in the hop (Envoy's ext_authz call, the
   Python gRPC or HTTP stack, scheduling), not in the decision. The rounds
   are interleaved so drifting machine load hits every variant.
3. CPU time of the ext_authz server process per request (from /proc), during
   the authz runs of 2.

Nothing here is a pass/fail check beyond "every answer was a 200 with a
result and went through ext_authz"; it prints a table. Processes are stopped
by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from concurrent import futures
from pathlib import Path
from typing import Any

import run  # bench/run.py: this script's directory is on sys.path

from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port, wait_for_port

HOST = run.HOST
HTTP_VARIANTS = ("real-http", "http")  # Envoy's ext_authz over HTTP (extAuthz: http)
HZ = os.sysconf("SC_CLK_TCK")


# -- no-op ext_authz servers (run as a subprocess of this script) --------------


def serve_stub(kind: str, port: int) -> None:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

    def ok() -> Any:
        response = external_auth_pb2.CheckResponse()
        response.status.code = 0
        response.ok_response.SetInParent()
        return response

    if kind == "http":
        serve_http_stub(port)
        return

    if kind == "sync":

        class SyncStub(external_auth_pb2_grpc.AuthorizationServicer):
            def Check(self, request: Any, context: Any) -> Any:
                return ok()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(SyncStub(), server)
        server.add_insecure_port(f"{HOST}:{port}")
        server.start()
        server.wait_for_termination()
        return

    class AioStub(external_auth_pb2_grpc.AuthorizationServicer):
        async def Check(self, request: Any, context: Any) -> Any:
            return ok()

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AioStub(), server)
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_http_stub(port: int) -> None:
    """A no-op ext_authz server over HTTP/1.1: 200 to every complete request, keep-alive."""
    import httptools

    class Stub(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Stub, HOST, port)
        await server.serve_forever()

    asyncio.run(main())


# -- 1. the decision alone -----------------------------------------------------


def decision_costs(policy_dir: Path, number: int = 5000) -> dict[str, float]:
    """Microseconds per call of each step of one ext_authz decision, in this process."""
    import datetime as dt
    import io
    import logging

    from envoy.service.auth.v3 import external_auth_pb2

    from xds_server.authz.decide import check_call
    from xds_server.authz.ext_authz import request_body, request_headers, to_check_response
    from xds_server.authz.ext_authz_http import ExtAuthzHttpProtocol
    from xds_server.authz.mcp.handler import parse_tool_call
    from xds_server.authz.service import PolicyService
    from xds_server.controlplane.pipeline import compile_policies
    from xds_server.core.cel import compile_condition

    ir, _ = compile_policies(policy_dir)
    service = PolicyService(port=0, approvals_port=0)
    service.update(ir)
    tool, arguments = run.CALLS["authz"]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                                        "io.modelcontextprotocol/clientCapabilities": {}}}})  # fmt: skip
    headers = {":authority": f"{HOST}:10000", ":method": "POST", ":path": "/mcp/github", ":scheme": "http",
               "content-type": "application/json", "accept": "application/json, text/event-stream",
               "x-agent-id": run.AGENT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
               "mcp-name": tool, "user-agent": "wrk", "x-forwarded-proto": "http",
               "x-request-id": "4f0c8c2e-1f0b-4c1e-9a7e-1234567890ab", "content-length": str(len(body))}  # fmt: skip
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers.update(headers)
    request.attributes.request.http.body = body
    request.attributes.context_extensions["backend"] = run.BACKEND
    raw = request.SerializeToString()
    condition = compile_condition(str(run.AUTHZ_RULE["when"]))
    variables = {"args": dict(arguments), "agent": {"name": run.AGENT}, "user": {}, "tool": tool,
                 "now": dt.datetime.now(dt.UTC)}  # fmt: skip
    # The decision log as `agentxds serve` configures it (INFO, one formatted line), into memory.
    logging.basicConfig(level="INFO", stream=io.StringIO(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)  # fmt: skip
    outcome = check_call(service.decider, route=run.BACKEND, headers=headers, body=body)
    assert outcome.allowed, outcome

    def whole() -> bytes:
        req = external_auth_pb2.CheckRequest.FromString(raw)
        out = check_call(service.decider, route=req.attributes.context_extensions.get("backend", ""),
                         headers=request_headers(req), body=request_body(req))  # fmt: skip
        service.log_decision(out.log)
        service.flush_decisions()  # batched in the service: counted here as if written per call
        return to_check_response(out).SerializeToString()

    class Sink:  # the HTTP adapter's transport: Envoy's connection, minus the socket
        def write(self, data: bytes) -> None:
            pass

    http_request = (f"POST /check/{run.BACKEND}/mcp/{run.BACKEND} HTTP/1.1\r\nhost: {HOST}\r\n"
                    f"content-length: {len(body)}\r\nx-agent-id: {run.AGENT}\r\n"
                    f"x-envoy-internal: true\r\n\r\n{body}").encode()  # fmt: skip
    adapter = ExtAuthzHttpProtocol(service, set())
    adapter.connection_made(Sink())  # type: ignore[arg-type]

    def whole_http() -> None:
        adapter.data_received(http_request)
        service.flush_decisions()

    steps = {
        "parse the CheckRequest (protobuf)": lambda: external_auth_pb2.CheckRequest.FromString(raw),
        "parse the JSON-RPC body": lambda: parse_tool_call(body),
        "evaluate the CEL condition": lambda: condition.evaluate(variables),
        "check_call (all of the decision)": lambda: check_call(
            service.decider, route=run.BACKEND, headers=headers, body=body),
        # Queued on the request path, formatted and written in batches after the answers.
        "one decision-log line, queued and written in a batch": lambda: service.decision_log.record(outcome.log),
        "the gRPC servicer's whole body (proto in, decision, log, proto out)": whole,
        "the HTTP adapter's whole body (bytes in, decision, log, bytes out)": whole_http,
    }  # fmt: skip

    async def on_the_loop() -> dict[str, float]:
        # As in the service: the decision log defers its writes only on a running event loop.
        costs = {}
        for name, fn in steps.items():
            costs[name] = timeit.timeit(fn, number=number) / number * 1e6
            service.flush_decisions()
        return costs

    return asyncio.run(on_the_loop())


# -- 2. and 3. through Envoy ---------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def measure_variant(kind: str, wrk: str, duration: int) -> dict[str, Any]:
    """Start server, control plane, Envoy and (for a stub) the no-op ext_authz server; measure c=1."""
    workdir = Path(tempfile.mkdtemp(prefix=f"agentxds-authz-{kind}-"))
    procs: list[subprocess.Popen[bytes]] = []
    envoy: EnvoyProcess | None = None
    try:
        server, direct_url = run.start_demo_server(workdir)
        procs.append(server)
        backend_port = int(direct_url.rsplit(":", 1)[1].split("/")[0])
        listen_port, policy_port, authz_http_port = free_port(HOST), free_port(HOST), free_port(HOST)
        authz_port = authz_http_port if kind in HTTP_VARIANTS else policy_port
        stub = None
        if kind not in ("real", "real-http"):
            authz_port = free_port(HOST)
            stub = subprocess.Popen([sys.executable, __file__, "--serve-stub", kind, "--port", str(authz_port)],
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            procs.append(stub)
            wait_for_port(HOST, authz_port, timeout=run.STARTUP_TIMEOUT_S)
        if kind in HTTP_VARIANTS:  # ext_authz over HTTP to authz_port; list filtering (unused here) to policy_port
            run.write_policies(workdir / "policies", listen_port=listen_port, backend_port=backend_port,
                               policy_port=policy_port, authz_http_port=authz_port)  # fmt: skip
        else:
            run.write_policies(workdir / "policies", listen_port=listen_port, backend_port=backend_port,
                               policy_port=authz_port)  # fmt: skip
        control, xds_port = run.start_control_plane(workdir / "policies", workdir, policy_port=policy_port,
                                                    authz_http_port=authz_http_port, name="control-plane")  # fmt: skip
        procs.append(control)
        bootstrap = render_bootstrap(node_id="bench-envoy", node_cluster=run.GATEWAY, xds_host=HOST,
                                     xds_port=xds_port, admin_port=0)  # fmt: skip
        envoy = EnvoyProcess(bootstrap, workdir=workdir / "envoy", log_level="error", concurrency=1).start()
        envoy.wait_live(timeout=run.STARTUP_TIMEOUT_S)
        wait_for_port(HOST, listen_port, timeout=run.STARTUP_TIMEOUT_S)
        gateway_url = f"http://{HOST}:{listen_port}/mcp/{run.BACKEND}"
        authz_pid = (stub or control).pid
        out: dict[str, Any] = {}
        run.run_wrk(wrk, gateway_url, run.CALLS["authz"], connections=1, duration=1)  # warm-up
        for path in ("allowed", "authz"):
            before, cpu_before = run.counters(envoy), cpu_seconds(authz_pid)
            r = run.run_wrk(wrk, gateway_url, run.CALLS[path], connections=1, duration=duration)
            r["counters"] = {k: v - before[k] for k, v in run.counters(envoy).items()}
            problems = run.problems(path, r)
            if problems:
                raise RuntimeError(f"{kind} {path}: {'; '.join(problems)}; logs in {workdir}")
            out[path] = {"rps": r["rps"], "latency_us": r["latency_us"], "requests": r["requests"],
                         "authz_cpu_ms_per_request": (cpu_seconds(authz_pid) - cpu_before) * 1000 / r["requests"]}  # fmt: skip
        shutil.rmtree(workdir, ignore_errors=True)
        return out
    finally:
        if envoy is not None:
            envoy.stop()
        for proc in reversed(procs):
            run.stop_process(proc)


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the five variants (default 2)")
    p.add_argument("--duration", type=int, default=5, help="seconds per measured point (default 5)")
    p.add_argument("--serve-stub", choices=("aio", "sync", "http"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_stub:
        serve_stub(args.serve_stub, args.port)
        return 0
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk; macOS: brew install wrk)")

    with tempfile.TemporaryDirectory(prefix="agentxds-authz-policies-") as tmp:
        run.write_policies(Path(tmp), listen_port=10000, backend_port=18081, policy_port=18001)
        costs = decision_costs(Path(tmp))
    print("1. one decision in Python, no network (microseconds per call):")
    for name, us in costs.items():
        print(f"   {us:7.1f} us  {name}")

    print(f"\n2./3. through Envoy, wrk -c1, {args.duration}s per point, {args.rounds} interleaved rounds:")
    results: dict[str, list[dict[str, Any]]] = {"real": [], "real-http": [], "aio": [], "sync": [], "http": []}
    for rnd in range(args.rounds):
        for kind in results:
            m = measure_variant(kind, wrk, args.duration)
            results[kind].append(m)
            a, z = m["allowed"]["latency_us"], m["authz"]["latency_us"]
            print(f"   round {rnd + 1} {kind:<9}: allowed p50 {a['p50'] / 1000:.2f} ms, authz p50 {z['p50'] / 1000:.2f} "
                  f"ms, added {(z['p50'] - a['p50']) / 1000:+.2f} ms; ext_authz server CPU "
                  f"{m['authz']['authz_cpu_ms_per_request']:.2f} ms/request", flush=True)  # fmt: skip

    print(
        "\n| ext_authz server | allowed p50 ms | authz p50 ms | authz − allowed p50 ms (min–max) | authz p99 ms "
        "| server CPU ms / authz request |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    labels = {
        "real": "policy service, gRPC (agentxds serve)",
        "real-http": "policy service, HTTP (extAuthz: http)",
        "aio": "no-op, grpc.aio",
        "sync": "no-op, grpc thread pool",
        "http": "no-op, asyncio HTTP/1.1",
    }
    for kind, ms in results.items():
        a = med([m["allowed"]["latency_us"]["p50"] for m in ms]) / 1000
        z = med([m["authz"]["latency_us"]["p50"] for m in ms]) / 1000
        # Added latency is paired within a round (same processes, measured back to back).
        deltas = [(m["authz"]["latency_us"]["p50"] - m["allowed"]["latency_us"]["p50"]) / 1000 for m in ms]
        z99 = med([m["authz"]["latency_us"]["p99"] for m in ms]) / 1000
        cpu = med([m["authz"]["authz_cpu_ms_per_request"] for m in ms])
        print(f"| {labels[kind]} | {a:.2f} | {z:.2f} | {med(deltas):+.2f} ({min(deltas):+.2f} – {max(deltas):+.2f}) "
              f"| {z99:.2f} | {cpu:.2f} |")  # fmt: skip
    print("\n(medians over the rounds; authz - allowed is paired within each round. The ext_authz server's CPU")
    print(" per request is its process's user + system time during the authz run, divided by the requests.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
