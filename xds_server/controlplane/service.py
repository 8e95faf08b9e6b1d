"""The running control plane: pipeline + snapshot cache + ADS/Status server + watcher,
and the policy service (ext_authz/ext_proc) fed with the same IR.

    control = ControlPlane("policies/", policy_port=18001)
    await control.start()      # loads and publishes once, then serves ADS, follows edits
    ...
    await control.stop()

Used by `agentxds serve`, `agentxds up` and the end-to-end tests alike, so the
tests exercise exactly what users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from xds_server.authz.server_tls import ServerTls
from xds_server.authz.service import PolicyService
from xds_server.authz.shared_state import SharedState
from xds_server.controlplane import endpoints_api, registry, registry_api
from xds_server.controlplane.heap import HeapSettler
from xds_server.controlplane.pipeline import Pipeline, ReloadResult
from xds_server.controlplane.runtime_endpoints import RuntimeEndpoints
from xds_server.controlplane.watch import watch_policies
from xds_server.sources import PolicySource
from xds_server.sources.directory import DirectorySource
from xds_server.sources.registry import RegisteredSource, Registry
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.server import ControlPlaneServer
from xds_server.xds.status import StatusRecorder

log = logging.getLogger(__name__)


class ControlPlane:
    """Serve `source` (a policy directory, or any PolicySource) over ADS on `host:port` (0 = pick a
    free port) and follow its changes.

    `start()` publishes the policies once before it serves, so the first Envoy
    to connect gets a configuration at once (if the policies are valid; if not,
    Envoys wait and the errors are in `last_reload`); a `reload()` before
    `start()` counts as that first publish. `watch=False` disables the file
    watcher (reload by calling `reload()`); only a directory source is
    watched. With `policy_port` set (0 = a free port), or after
    `add_policy_service`, the policy service runs too, on `policy_host`, with
    its approvals API on `approvals_port` and, unless `authz_http_port` is
    None, ext_authz over HTTP on that port; each published IR is handed to it.
    `on_reload` is called after every reload (it may be set later).
    `allow_emptying` publishes edits that empty a file or leave a gateway
    without grants (refused otherwise; see controlplane/emptying.py).
    `approvals_db`: the SQLite file the policy service keeps approvals in
    (None: in memory, lost on stop). `sealing_key_file`: the policy
    service's own key for sealed ids (None: one per process). `serve_ads=False` runs the pipeline (and
    the policy service, if any) without the ADS server: a policy service of
    its own, which goes on deciding while the process serving ADS is
    restarted or killed. `runtime`: endpoints set at run time (the endpoints
    file and API, controlplane/runtime_endpoints.py); `serve_endpoints_api`
    serves the API. `registry`: the runtime registry of A2A agents and MCP
    servers served beside the directory (sources/registry.py);
    `serve_registry_api` serves its API. `policy_tls`: the policy service's decision ports over TLS
    (authz/server_tls.py).
    """

    def __init__(
        self,
        source: PolicySource | str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        watch: bool = True,
        debounce_ms: int = 100,
        on_reload: Callable[[ReloadResult], None] | None = None,
        policy_host: str = "127.0.0.1",
        policy_port: int | None = None,
        approvals_port: int = 0,
        authz_http_port: int | None = None,
        allow_emptying: bool = False,
        approvals_db: str | Path | None = None,
        coverage_file: Path | None = None,
        serve_ads: bool = True,
        sealing_key_file: Path | None = None,
        state_store: str | None = None,
        runtime: RuntimeEndpoints | None = None,
        registry: Registry | None = None,
        policy_tls: ServerTls | None = None,
    ) -> None:
        if registry is not None:
            # The runtime registry beside the policy directory (Git wins, sources/registry.py).
            path = source.path if isinstance(source, DirectorySource) else Path(str(source))
            source = RegisteredSource(path, registry=registry)
        self.cache = SnapshotCache()
        self.recorder = StatusRecorder()
        self.runtime = runtime
        self.pipeline = Pipeline(source, self.cache, self.recorder, allow_emptying=allow_emptying,
                                 coverage_file=coverage_file, runtime=runtime)  # fmt: skip
        self.server = ControlPlaneServer(self.cache, self.recorder, host=host, port=port)
        self._serve_ads = serve_ads
        self._heap = HeapSettler()
        self._watch = watch
        self._debounce_ms = debounce_ms
        self.on_reload = on_reload
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._registry_follower: asyncio.Task[None] | None = None
        self.last_reload: ReloadResult | None = None
        self.reloads = 0
        self.approvals_db = approvals_db
        self.sealing_key_file = sealing_key_file
        self.policy_service: PolicyService | None = None
        self.endpoints_port: int | None = None  # the endpoints API's, once started (serve_endpoints_api)
        self.registry_port: int | None = None  # the registry API's, once started (serve_registry_api)
        self._apis: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        if policy_port is not None:
            self.add_policy_service(policy_host, policy_port, approvals_port, authz_http_port, state_store, policy_tls)

    def add_policy_service(
        self, host: str, port: int, approvals_port: int = 0, authz_http_port: int | None = None,
        state_store: str | None = None, tls: ServerTls | None = None, approvals_host: str = "127.0.0.1",
        approvals_token: str | None = None,
    ) -> PolicyService:  # fmt: skip
        """Run the policy service too (before `start()`), fed with the current and every later IR.
        `state_store`: the Valkey/Redis URL its quotas are kept in (shared by replicas), or None;
        `tls`: its decision ports over TLS (authz/server_tls.py), or None; its approvals API on
        `approvals_host` (loopback by default, whatever `host` is), with `approvals_token` if given."""
        self.policy_service = PolicyService(host=host, port=port, authz_http_port=authz_http_port,
                                            approvals_host=approvals_host, approvals_port=approvals_port,
                                            approvals_db=self.approvals_db,
                                            sealing_key_file=self.sealing_key_file,
                                            state_store=state_store, tls=tls,
                                            approvals_token=approvals_token)  # fmt: skip
        if self.pipeline.ir is not None and self.last_reload is not None:
            self.policy_service.update(self.pipeline.ir, _versions(self.last_reload))
        return self.policy_service

    @property
    def port(self) -> int:
        return self.server.port

    def reload(self) -> ReloadResult:
        result = self.pipeline.reload()
        self._record(result)
        return result

    def _record(self, result: ReloadResult) -> None:
        if result.ok and self.policy_service is not None and self.pipeline.ir is not None:
            self.policy_service.update(self.pipeline.ir, _versions(result))
        if result.ok:
            self._heap.after_publish()
        self.last_reload = result
        self.reloads += 1
        if self.on_reload is not None:
            self.on_reload(result)

    async def start(self) -> ControlPlane:
        if self.last_reload is None:
            self.reload()
        if self.policy_service is not None:
            # Before ADS serves: Envoy must find the policy service up once routes use it.
            await self.policy_service.start()
        if self._serve_ads:
            await self.server.start()
        if isinstance(self.pipeline.source, RegisteredSource):
            self._registry_follower = asyncio.create_task(self._follow_registry(self.pipeline.source),
                                                          name="agentxds-registry-follow")  # fmt: skip
        if self._watch and isinstance(self.pipeline.source, DirectorySource):
            self._watcher = asyncio.create_task(self._watch_loop(), name="agentxds-policy-watch")
        elif self._watch:
            log.info("policy source %s is not a directory: it is not watched (reload() publishes it)",
                     self.pipeline.source.name)  # fmt: skip
        if self._serve_ads:
            log.info("control plane serving ADS on %s", self.server.address)
        return self

    async def serve_endpoints_api(self, host: str, port: int, token: str) -> int:
        """Serve the endpoints API (controlplane/endpoints_api.py) on `host:port` (0: a free port),
        with bearer `token`; needs `runtime`. Returns the port."""
        if self.runtime is None:
            raise ValueError("the endpoints API needs runtime endpoints (ControlPlane(runtime=...))")
        if not token:
            raise ValueError("the endpoints API needs a token")
        app = endpoints_api.build_app(self.pipeline, self.runtime, token, self.reload)
        self.endpoints_port = self._serve_api(app, host, port, "endpoints API")
        return self.endpoints_port

    async def serve_registry_api(self, host: str, port: int, token: str,
                                 networks: registry.Networks = registry.DEFAULT_NETWORKS) -> int:  # fmt: skip
        """Serve the registry API (controlplane/registry_api.py) on `host:port` (0: a free port), with
        bearer `token`, for registrations in `networks`; needs `registry`. Returns the port."""
        source = self.pipeline.source
        if not isinstance(source, RegisteredSource):
            raise ValueError("the registry API needs a registry (ControlPlane(registry=...))")
        if not token:
            raise ValueError("the registry API needs a token")

        def approvals() -> registry.DriftApprovals | None:
            # The store the operators' approvals API shows: the shared one with a state store.
            service = self.policy_service
            if service is None:
                return None
            if isinstance(service.state, SharedState):
                return service.state.approvals
            return registry.LocalDriftApprovals(service.approvals)

        async def fetch(url: str) -> list[dict[str, Any]]:
            from xds_server.authz.mcp.pin import fetch_tools

            return await fetch_tools(url, timeout=10)

        app = registry_api.build_app(source, token, self.reload, approvals, fetch, self.applied, networks)
        self.registry_port = self._serve_api(app, host, port, "registry API")
        return self.registry_port

    async def applied(self, result: ReloadResult, since: float, timeout: float = 2.0) -> bool:
        """Wait until every connected Envoy of the groups `result` changed has acknowledged what was sent
        to it after `since` (unix time, before the reload); False when `timeout` passed first. True at
        once when nothing changed or no Envoy of those groups is connected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            nodes = [n for n in self.recorder.view().nodes if n.connected and n.group in result.changed]
            if all(any(t.sent_at is not None and t.sent_at >= since for t in n.types)
                   and all(t.sent_version == t.acked_version for t in n.types) for n in nodes):  # fmt: skip
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)

    def _serve_api(self, app: Any, host: str, port: int, what: str) -> int:
        """Serve an operator API (`app`) on `host:port` (0: a free port) until `stop()`; its port."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
        bound = int(sock.getsockname()[1])
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._apis.append((server, asyncio.create_task(server.serve(sockets=[sock]), name=what)))
        log.info("%s on http://%s:%d", what, host, bound)
        return bound

    async def _follow_registry(self, source: RegisteredSource, interval_s: float = 0.5) -> None:
        """Rebuild when the registry changed under another process (another control plane on the shared
        store, or on the same SQLite file): every one of them serves the same registrations."""
        seen: int | None = None
        down = False
        while not self._stop.is_set():
            version: int | None
            try:
                version = await asyncio.to_thread(source.registry.version)
                if down:
                    log.warning("runtime registry readable again")
                down = False
            except Exception as exc:  # the store down: keep serving what was built (said once)
                if not down:
                    log.warning("runtime registry unreadable (%s); serving what was built last", exc)
                down, version = True, seen
            if seen is not None and version != seen:
                self._record(self.pipeline.reload())
            seen = version
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval_s)

    async def _watch_loop(self) -> None:
        await watch_policies(self.pipeline, debounce_ms=self._debounce_ms, stop=self._stop, on_reload=self._record)

    async def stop(self) -> None:
        self._stop.set()
        if self._registry_follower is not None:
            self._registry_follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._registry_follower
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        for server, task in self._apis:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        self._apis.clear()
        if self._serve_ads:
            await self.server.stop()
        if self.policy_service is not None:
            await self.policy_service.stop()

    async def __aenter__(self) -> ControlPlane:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _versions(result: ReloadResult) -> str:
    return ",".join(f"{g}@{v}" for g, v in sorted(result.versions.items()))
