"""The running control plane: pipeline + snapshot cache + ADS/Status server + watcher.

Used by `agentxds serve`, `agentxds up` and the end-to-end tests alike, so the
tests exercise exactly what users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Callable

from xds_server.pipeline import Pipeline, ReloadResult
from xds_server.watch import watch_policies
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.server import ControlPlaneServer
from xds_server.xds.status import StatusRecorder

log = logging.getLogger(__name__)


class ControlPlane:
    """Serve `policy_dir` over ADS on `host:port` (0 = pick a free port) and follow its changes.

    `start()` publishes the policies once before it serves, so the first Envoy
    to connect gets a configuration at once (if the policies are valid; if not,
    Envoys wait and the errors are in `last_reload`). `watch=False` disables
    the file watcher (reload by calling `reload()`).
    """

    def __init__(
        self,
        policy_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        watch: bool = True,
        debounce_ms: int = 100,
        on_reload: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        self.cache = SnapshotCache()
        self.recorder = StatusRecorder()
        self.pipeline = Pipeline(policy_dir, self.cache, self.recorder)
        self.server = ControlPlaneServer(self.cache, self.recorder, host=host, port=port)
        self._watch = watch
        self._debounce_ms = debounce_ms
        self._on_reload = on_reload
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.last_reload: ReloadResult | None = None
        self.reloads = 0

    @property
    def port(self) -> int:
        return self.server.port

    def reload(self) -> ReloadResult:
        result = self.pipeline.reload()
        self.last_reload = result
        self.reloads += 1
        if self._on_reload is not None:
            self._on_reload(result)
        return result

    async def start(self) -> ControlPlane:
        self.reload()
        await self.server.start()
        if self._watch:
            self._watcher = asyncio.create_task(self._watch_loop(), name="agentxds-policy-watch")
        log.info("control plane serving ADS on %s", self.server.address)
        return self

    async def _watch_loop(self) -> None:
        def record(result: ReloadResult) -> None:
            self.last_reload = result
            self.reloads += 1
            if self._on_reload is not None:
                self._on_reload(result)

        await watch_policies(self.pipeline, debounce_ms=self._debounce_ms, stop=self._stop, on_reload=record)

    async def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        await self.server.stop()

    async def __aenter__(self) -> ControlPlane:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
