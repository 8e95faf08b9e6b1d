"""The policy service: ext_authz + ext_proc over gRPC, ext_authz over HTTP, the approvals HTTP
API, delegated upstream credentials, and one handler per protocol (authz/protocols.py).

It reads the same IR as the translators (never the raw YAML, never the
translators' output): the control plane calls `update(ir)` after each
published change. Quota counts, approvals, the protocols' state (MCP: tool
verdicts) and exchanged tokens live here and outlive policy reloads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from xds_server.authz.a2a.handler import A2aHandler
from xds_server.authz.approvals import ApprovalStore
from xds_server.authz.approvals_http import build_app
from xds_server.authz.credentials import CredentialIssuer
from xds_server.authz.decide import Decider
from xds_server.authz.decision_log import DecisionLog
from xds_server.authz.effects import LocalState, StateUnavailable
from xds_server.authz.engine import Engine
from xds_server.authz.ext_authz import ExtAuthzServicer
from xds_server.authz.ext_authz_http import ExtAuthzHttpProtocol, OpenConnections
from xds_server.authz.ext_proc import ExtProcServicer
from xds_server.authz.mcp.handler import McpHandler
from xds_server.authz.protocols import ProtocolHandler
from xds_server.authz.quota import QuotaStore
from xds_server.authz.sealing import Sealer, key_from_file
from xds_server.authz.server_tls import ServedTls, ServerTls
from xds_server.authz.shared_state import SharedState
from xds_server.authz.state import PolicyIndex, RouteView
from xds_server.authz.vmcp.front import VirtualFront
from xds_server.ir.types import IR

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
    `approvals_port` after `start()`. `approvals_db` is the SQLite file approvals are kept in
    (they survive a restart); None keeps them in memory. `sealing_key_file` holds the key that
    seals task ids for gateways without their own `sealingKey` (made on first use); None: a
    key of this process only (ids it sealed do not open after a restart). `state_store` is
    the URL of a Valkey/Redis server that keeps the quotas and approvals, shared by every
    replica given the same URL; None keeps them here (quotas in memory, approvals in SQLite).
    `tls`: the decision ports (gRPC and HTTP, not approvals) are served over TLS with it
    (server_tls.py; a file that cannot be used makes `start()` raise ServerTlsError).
    `approvals_token`: the approvals API answers only requests with it (approvals_http.py).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 18001, authz_http_port: int | None = None,
                 approvals_host: str = "127.0.0.1", approvals_port: int = 18002,
                 approvals_db: str | os.PathLike[str] | None = None,
                 sealing_key_file: str | os.PathLike[str] | None = None,
                 state_store: str | None = None, tls: ServerTls | None = None,
                 approvals_token: str | None = None) -> None:  # fmt: skip
        self.host, self.port = host, port
        self.tls = tls
        self.approvals_token = approvals_token
        self.authz_http_port = authz_http_port
        self.approvals_host, self.approvals_port = approvals_host, approvals_port
        self.index = PolicyIndex()
        self.approvals = ApprovalStore(path=approvals_db)
        self.state: LocalState | SharedState = (
            SharedState(state_store) if state_store else LocalState(QuotaStore(), self.approvals)
        )
        self.engine = Engine(self.state)
        self.credentials = CredentialIssuer()
        self.decision_log = DecisionLog(decisions)
        #: ext_authz checks answered, by backend (both transports): what a call cost in Python.
        self.checks: collections.Counter[str] = collections.Counter()
        self.mcp = McpHandler(self.log_decision)
        #: One handler per protocol, by route kind.
        a2a = A2aHandler(self.log_decision)
        self.handlers: dict[str, ProtocolHandler] = {self.mcp.kind: self.mcp, a2a.kind: a2a}
        self._default_key = key_from_file(Path(sealing_key_file)) if sealing_key_file else secrets.token_bytes(32)
        self._sealers: dict[bytes, Sealer] = {}
        #: The virtual MCP servers' front (authz/vmcp/), on the HTTP port.
        self.vmcp = VirtualFront(self.sealer_for)
        self._decider: Decider | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._authz_http: asyncio.Server | None = None
        self._authz_http_connections = OpenConnections()
        self._http_task: asyncio.Task[None] | None = None
        #: What `update` logged about settings that disagree: logged again only once gone and back.
        self._logged_problems: set[str] = set()

    # -- policies ----------------------------------------------------------

    @property
    def decider(self) -> Decider:
        """What a decision reads now: the latest policies (built again only when they change)."""
        decider = self._decider
        if decider is None or decider.index is not self.index or decider.issuer is not self.credentials:
            decider = self._decider = Decider(self.index, self.engine, self.handlers, self.credentials)
        return decider

    def update(self, ir: IR, version: str = "") -> None:
        """Swap in a newly published policy set, read its client secrets, and let each protocol follow it."""
        self.index = PolicyIndex.from_ir(ir, version)
        self.credentials.update(ir)
        problems = self._settings_problems(ir)
        for problem in sorted(problems - self._logged_problems):
            log.error("%s", problem)
        self._logged_problems = problems
        for handler in self.handlers.values():
            handler.update(self.index, running=self._grpc is not None)
        self.vmcp.policies_changed(self.index)  # a changed virtual server's open streams end (clients listen again)

    def _settings_problems(self, ir: IR) -> set[str]:
        """Where a gateway and this service's own settings disagree (each logged once, when it appears)."""
        problems: set[str] = set()
        for gateway in ir.gateways:
            if self.authz_http_port is None and gateway.ext_authz_http is not None:  # every decision would fail
                problems.add(f"gateway {gateway.name!r} asks for ext_authz over HTTP (policyService.extAuthz: http, "
                             "the default) but this policy service serves no HTTP port (--authz-http-port): its "
                             "calls that need a decision are refused")  # fmt: skip
            if gateway.needs_policy_service and (gateway.policy_service_tls is None) != (self.tls is None):
                # One side speaks TLS, the other does not: every hop fails (or passes undecided on failOpen).
                hop = "over TLS (policyService.tls)" if gateway.policy_service_tls else "in plain HTTP/gRPC"
                served = "TLS" if self.tls else "plain HTTP/gRPC"
                problems.add(f"gateway {gateway.name!r} reaches its policy service {hop}, but this policy service "
                             f"serves {served} (--policy-tls-cert/--policy-tls-key): if it is this one, its calls "
                             "that need a decision fail")  # fmt: skip
        return problems

    def sealer_for(self, view: RouteView) -> Sealer:
        """What seals ids on `view`'s gateway: its `sealingKey`, else this service's own key."""
        secret = view.gateway.sealing_key
        key = secret.value.encode("utf-8") if secret is not None else self._default_key
        sealer = self._sealers.get(key)
        if sealer is None:
            sealer = self._sealers[key] = Sealer(key)
        return sealer

    def log_decision(self, record: Mapping[str, Any]) -> None:
        """Queue one decision for the decision log (written within 100 ms; see decision_log.py)."""
        self.decision_log.record(record)

    def flush_decisions(self) -> None:
        """Write the queued decisions to the decision log now."""
        self.decision_log.flush()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> PolicyService:
        served = ServedTls(self.tls) if self.tls is not None else None  # a file that cannot be used: raises
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ExtAuthzServicer(self), server)
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(ExtProcServicer(self), server)
        address = f"{self.host}:{self.port}"
        bound = (
            server.add_secure_port(address, served.grpc_credentials()) if served else server.add_insecure_port(address)
        )
        if bound == 0:
            raise OSError(f"policy service: cannot listen on {self.host}:{self.port}")
        self.port = bound
        await server.start()
        self._grpc = server

        if self.authz_http_port is not None:
            authz_sock = _listen_socket(self.host, self.authz_http_port)
            self.authz_http_port = authz_sock.getsockname()[1]
            self._authz_http = await asyncio.get_running_loop().create_server(
                lambda: ExtAuthzHttpProtocol(self, self._authz_http_connections),
                sock=authz_sock,
                ssl=served.ssl_context() if served else None,
            )

        sock = _listen_socket(self.approvals_host, self.approvals_port)
        self.approvals_port = sock.getsockname()[1]
        approvals = self.state.approvals if isinstance(self.state, SharedState) else self.approvals
        config = uvicorn.Config(build_app(approvals, self.approvals_token), log_level="warning", lifespan="off")
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="approvals-http")
        for handler in self.handlers.values():
            handler.update(self.index, running=True)
        if isinstance(self.state, SharedState):
            try:
                await self.state.ping()
            except StateUnavailable as exc:  # not fatal: calls that need it are refused until it answers
                log.warning("shared decision state unreachable (calls under quotas or approvals are refused): %s", exc)
        log.info("decision state: %s", self.state.describe())
        log.info("policy service on %s:%d (gRPC)%s%s, approvals on http://%s:%d", self.host, self.port,
                 f", ext_authz over HTTP on port {self.authz_http_port}" if self._authz_http else "",
                 f" over {self.tls.describe()}" if self.tls else "", self.approvals_host, self.approvals_port)  # fmt: skip
        return self

    async def stop(self) -> None:
        # First: a policy update arriving while this stops must not start anything again (a tool guard's
        # refresh loop restarted here would outlive the service).
        server, self._grpc = self._grpc, None
        for handler in self.handlers.values():
            await handler.stop()
        if self._http is not None:
            self._http.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._http_task, timeout=5)
        if self._authz_http is not None:
            self._authz_http.close()
            self._authz_http_connections.close_all()  # Envoy's kept-alive ones: no more decisions from here
            self._authz_http = None
        if server is not None:
            await server.stop(grace=1.0)
        await self.credentials.aclose()
        await self.vmcp.close()
        if isinstance(self.state, SharedState):
            await self.state.aclose()
        self.flush_decisions()
