"""The policy service: ext_authz + ext_proc over gRPC, ext_authz over HTTP, the approvals HTTP
API, tool refresh, delegated backend credentials.

It reads the same IR as the translators (never the raw YAML): the control
plane calls `update(ir)` after each published change. Quota counts, approvals,
tool verdicts and exchanged tokens live here and outlive policy reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from typing import Any

import grpc
import uvicorn
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from xds_server.authz.approvals import ApprovalStore
from xds_server.authz.approvals_http import build_app
from xds_server.authz.credentials import CredentialIssuer
from xds_server.authz.decision_log import DecisionLog
from xds_server.authz.engine import Engine
from xds_server.authz.ext_authz import ExtAuthzServicer
from xds_server.authz.ext_authz_http import ExtAuthzHttpProtocol
from xds_server.authz.ext_proc import ExtProcServicer
from xds_server.authz.mcp.tool_guard import GuardState
from xds_server.authz.quota import QuotaStore
from xds_server.authz.state import PolicyIndex
from xds_server.ir.types import IR, BackendIR

log = logging.getLogger(__name__)
decisions = logging.getLogger("agentxds.decisions")


def _listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class PolicyService:
    """Serve decisions on `host:port` (gRPC: ext_authz and ext_proc) and, if `authz_http_port` is
    not None, on `host:authz_http_port` (ext_authz over HTTP/1.1), and approvals on
    `approvals_host:approvals_port` (HTTP).

    Port 0 picks a free port; read the bound ports from `port`, `authz_http_port` and
    `approvals_port` after `start()`.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 18001, authz_http_port: int | None = None,
                 approvals_host: str = "127.0.0.1", approvals_port: int = 18002) -> None:  # fmt: skip
        self.host, self.port = host, port
        self.authz_http_port = authz_http_port
        self.approvals_host, self.approvals_port = approvals_host, approvals_port
        self.index = PolicyIndex()
        self.approvals = ApprovalStore()
        self.engine = Engine(QuotaStore(), self.approvals)
        self.guard = GuardState()
        self.credentials = CredentialIssuer()
        self.decision_log = DecisionLog(decisions)
        self._grpc: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._authz_http: asyncio.Server | None = None
        self._authz_http_transports: set[asyncio.BaseTransport] = set()
        self._http_task: asyncio.Task[None] | None = None
        self._refreshers: dict[str, asyncio.Task[None]] = {}

    # -- policies ----------------------------------------------------------

    def update(self, ir: IR, version: str = "") -> None:
        """Swap in a newly published policy set, read its client secrets, and (re)start tool refreshers."""
        self.index = PolicyIndex.from_ir(ir, version)
        self.credentials.update(ir)
        guarded = {name: view.backend for name, view in self.index.backends.items() if view.backend.tool_guard}
        for name in list(self._refreshers):
            if name not in guarded:
                self._refreshers.pop(name).cancel()
                self.guard.forget(name)
        for name, backend in guarded.items():
            if self._grpc is not None:  # running: refresh now, with the new guard settings
                old = self._refreshers.pop(name, None)
                if old is not None:
                    old.cancel()
                self._refreshers[name] = asyncio.create_task(self._refresh_loop(backend), name=f"refresh-{name}")

    def log_decision(self, record: Mapping[str, Any]) -> None:
        """Queue one decision for the decision log (written within 100 ms; see decision_log.py)."""
        self.decision_log.record(record)

    def flush_decisions(self) -> None:
        """Write the queued decisions to the decision log now."""
        self.decision_log.flush()

    # -- tool guard --------------------------------------------------------

    async def _refresh_loop(self, backend: BackendIR) -> None:
        from xds_server.authz.mcp.pin import fetch_tools

        guard = backend.tool_guard
        assert guard is not None
        endpoint = backend.endpoints[0]
        scheme = "https" if backend.upstream_tls is not None else "http"
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        url = f"{scheme}://{host}:{endpoint.port}{backend.upstream_path}"
        while True:
            try:
                tools = await fetch_tools(url, timeout=10)
                verdicts = self.guard.observe(backend.name, tools, guard)
                withheld = sorted(n for n, v in verdicts.items() if not v.usable)
                if withheld:
                    log.warning("backend %s: tools withheld by the tool guard: %s", backend.name, ", ".join(withheld))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the backend may be down; the next round tries again
                log.warning("backend %s: could not read its tools (%s)", backend.name, exc)
            await asyncio.sleep(guard.refresh_ms / 1000)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> PolicyService:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ExtAuthzServicer(self), server)
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(ExtProcServicer(self), server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"policy service: cannot listen on {self.host}:{self.port}")
        self.port = bound
        await server.start()
        self._grpc = server

        if self.authz_http_port is not None:
            authz_sock = _listen_socket(self.host, self.authz_http_port)
            self.authz_http_port = authz_sock.getsockname()[1]
            self._authz_http = await asyncio.get_running_loop().create_server(
                lambda: ExtAuthzHttpProtocol(self, self._authz_http_transports), sock=authz_sock
            )

        sock = _listen_socket(self.approvals_host, self.approvals_port)
        self.approvals_port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.approvals), log_level="warning", lifespan="off")
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="approvals-http")
        self.update_running()
        log.info("policy service on %s:%d (gRPC)%s, approvals on http://%s:%d", self.host, self.port,
                 f", ext_authz over HTTP on port {self.authz_http_port}" if self._authz_http else "",
                 self.approvals_host, self.approvals_port)  # fmt: skip
        return self

    def update_running(self) -> None:
        """Start refreshers for the policies loaded before `start()`."""
        for name, view in self.index.backends.items():
            if view.backend.tool_guard and name not in self._refreshers:
                self._refreshers[name] = asyncio.create_task(self._refresh_loop(view.backend), name=f"refresh-{name}")

    async def stop(self) -> None:
        for task in self._refreshers.values():
            task.cancel()
        for task in self._refreshers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._refreshers.clear()
        if self._http is not None:
            self._http.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._http_task, timeout=5)
        if self._authz_http is not None:
            self._authz_http.close()
            for transport in list(self._authz_http_transports):
                transport.close()  # Envoy's kept-alive connections: no more decisions from this instance
            self._authz_http = None
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
            self._grpc = None
        await self.credentials.aclose()
        self.flush_decisions()
