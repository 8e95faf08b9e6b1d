"""One grpc.aio server hosting ADS (for Envoy) and agentxds.v1.Status (for humans and tests).

    cache, recorder = SnapshotCache(), StatusRecorder()
    server = ControlPlaneServer(cache, recorder, host="127.0.0.1", port=0)
    port = await server.start()          # port 0: the OS picks a free port
    cache.set("mcp-gateway", Snapshot.build({...}))   # pushed to open streams
    ...
    await server.stop()

Also usable as `async with ControlPlaneServer(...) as server: server.port`.
"""

from __future__ import annotations

import logging

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from xds_server.api.agentxds.v1 import status_pb2_grpc

from .ads import AdsServicer
from .cache import SnapshotCache
from .status import StatusRecorder
from .status_api import StatusServicer

log = logging.getLogger(__name__)

_OPTIONS = [
    # gRPC enables SO_REUSEPORT by default: a second control plane on the same
    # port would then share it silently. Fail to bind instead.
    ("grpc.so_reuseport", 0),
    # Snapshots with many routes can exceed the 4 MiB default; Envoy's own
    # requests are small, responses are what grow.
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ControlPlaneServer:
    """Start/stop the control plane's gRPC endpoint. Not reusable after `stop`."""

    def __init__(self, cache: SnapshotCache, recorder: StatusRecorder, host: str = "127.0.0.1", port: int = 0) -> None:
        self.cache = cache
        self.recorder = recorder
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._ads: AdsServicer | None = None

    @property
    def port(self) -> int:
        """The bound port; only valid after `start`."""
        if self._port is None:
            raise RuntimeError("ControlPlaneServer is not started")
        return self._port

    @property
    def address(self) -> str:
        """`host:port` to give to Envoy's bootstrap or to `status_api.get_status`."""
        return _join(self.host, self.port)

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError if the port is taken."""
        if self._server is not None:
            raise RuntimeError("ControlPlaneServer already started")
        server = grpc.aio.server(options=_OPTIONS)
        self._ads = AdsServicer(self.cache, self.recorder)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self._ads, server)
        status_pb2_grpc.add_StatusServicer_to_server(StatusServicer(self.recorder, self.cache), server)
        target = _join(self.host, self._requested_port)
        try:
            port = server.add_insecure_port(target)
        except RuntimeError as exc:  # grpcio raises RuntimeError when binding fails
            raise OSError(f"cannot bind the control plane to {target}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind the control plane to {target}")
        await server.start()
        self._server, self._port = server, port
        log.info("control plane serving ADS and Status on %s", self.address)
        return port

    async def stop(self, grace: float = 1.0) -> None:
        """Close ADS streams (Envoy reconnects elsewhere or later) and stop within `grace` seconds."""
        if self._server is None:
            return
        if self._ads is not None:
            self._ads.close()  # streams end on their own; no need to wait for the grace period
        await self._server.stop(grace)
        self._server = None
        log.info("control plane on %s:%s stopped", self.host, self._port)

    async def __aenter__(self) -> ControlPlaneServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
