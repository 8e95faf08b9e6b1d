"""The `agentxds.v1.Status` gRPC service: a thin adapter over `StatusRecorder`.

`to_proto` is the pure conversion; `StatusServicer` serves it; `get_status` is
the client call used by `agentxds status` and tests.

Group versions: the cache knows which snapshot each group is actually served,
the recorder knows what the pipeline said it published (`set_snapshot_version`).
The response lists the union; where both know a group the cache wins, because
it is what Envoy receives.
"""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from xds_server.api.agentxds.v1 import status_pb2, status_pb2_grpc

from .cache import SnapshotCache
from .status import GroupStatus, NackRecord, StatusRecorder, StatusView, TypeStatus


def _ts(at: float | None) -> timestamp_pb2.Timestamp | None:
    if at is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(at * 1e9))
    return stamp


def _nack(rec: NackRecord) -> status_pb2.Nack:
    return status_pb2.Nack(
        node_id=rec.node_id, type_url=rec.type_url, version=rec.version, error_message=rec.message, time=_ts(rec.at)
    )


def _type(ts: TypeStatus) -> status_pb2.TypeStatus:
    return status_pb2.TypeStatus(
        type_url=ts.type_url,
        sent_version=ts.sent_version,
        sent_time=_ts(ts.sent_at),
        acked_version=ts.acked_version,
        acked_time=_ts(ts.acked_at),
        last_nack=_nack(ts.last_nack) if ts.last_nack is not None else None,
    )


def to_proto(view: StatusView, served: dict[str, str] | None = None) -> status_pb2.GetStatusResponse:
    """Convert a recorder view (+ cache group -> served version) to the API message."""
    groups: dict[str, GroupStatus] = {g.group: g for g in view.groups}
    for group, version in (served or {}).items():
        prev = groups.get(group)
        at = prev.updated_at if prev is not None and prev.snapshot_version == version else None
        groups[group] = GroupStatus(group, version, at)
    resp = status_pb2.GetStatusResponse(
        policy_errors=list(view.policy_errors),
        internal_errors=list(view.internal_errors),
        policy_warnings=list(view.policy_warnings),
    )
    for node in view.nodes:
        resp.nodes.append(
            status_pb2.NodeStatus(
                node_id=node.node_id,
                group=node.group,
                connected=node.connected,
                connected_since=_ts(node.connected_since),
                types=[_type(t) for t in node.types],
                recent_nacks=[_nack(n) for n in node.recent_nacks],
            )
        )
    for name in sorted(groups):
        g = groups[name]
        resp.groups.append(
            status_pb2.GroupStatus(group=g.group, snapshot_version=g.snapshot_version, updated_time=_ts(g.updated_at))
        )
    return resp


class StatusServicer(status_pb2_grpc.StatusServicer):
    def __init__(self, recorder: StatusRecorder, cache: SnapshotCache | None = None) -> None:
        self._recorder = recorder
        self._cache = cache

    async def GetStatus(  # noqa: N802 (gRPC method name)
        self, request: status_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> status_pb2.GetStatusResponse:
        served = self._cache.groups() if self._cache is not None else None
        return to_proto(self._recorder.view(), served)


async def get_status(target: str, timeout: float = 5.0) -> status_pb2.GetStatusResponse:
    """Call Status.GetStatus on `target` ("host:port") over an insecure channel."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = status_pb2_grpc.StatusStub(channel)
        return await stub.GetStatus(status_pb2.GetStatusRequest(), timeout=timeout)
