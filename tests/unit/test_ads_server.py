"""The real grpc.aio control plane, driven by a real grpc.aio client speaking ADS like Envoy."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xds_server.xds.cache import SnapshotCache
from xds_server.xds.server import ControlPlaneServer
from xds_server.xds.snapshot import CLUSTER, ENDPOINT, LISTENER
from xds_server.xds.status import StatusRecorder, StatusView
from xds_server.xds.status_api import get_status

from .xds_fixtures import GROUP, NODE_ID, request, snapshot

TIMEOUT = 10  # seconds; only a safety net against hangs, never a timing assertion


class AwaitableRecorder(StatusRecorder):
    """A StatusRecorder that tests can await (`until`) instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()

    async def until(self, predicate) -> StatusView:
        async def loop() -> StatusView:
            while True:
                self._changed.clear()
                view = self.view()
                if predicate(view):
                    return view
                await self._changed.wait()

        return await asyncio.wait_for(loop(), TIMEOUT)


for _name in ("node_connected", "node_disconnected", "on_subscribe", "on_sent", "on_ack", "on_nack"):

    def _wrap(name: str):
        base = getattr(StatusRecorder, name)

        def method(self, *args):
            base(self, *args)
            self._notify()

        return method

    setattr(AwaitableRecorder, _name, _wrap(_name))


class FakeEnvoy:
    """One ADS stream used the way Envoy uses it (node on the first request only)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.first = True

    async def send(self, type_url: str, **kw) -> None:
        await self.call.write(request(type_url, node=self.first, **kw))
        self.first = False

    async def recv(self) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.call.read(), TIMEOUT)
        assert resp is not grpc.aio.EOF
        return resp

    async def ack(self, resp: discovery_pb2.DiscoveryResponse, **kw) -> None:
        await self.send(resp.type_url, version=resp.version_info, nonce=resp.nonce, **kw)


def names(resp: discovery_pb2.DiscoveryResponse, cls) -> list[str]:
    out = []
    for any_msg in resp.resources:
        msg = cls()
        assert any_msg.Unpack(msg)
        out.append(getattr(msg, "cluster_name", None) or msg.name)
    return out


@pytest.fixture
async def plane():
    server = ControlPlaneServer(SnapshotCache(), AwaitableRecorder(), host="127.0.0.1", port=0)
    port = await server.start()
    assert port > 0 and server.address == f"127.0.0.1:{port}"
    yield server
    await server.stop()


@pytest.fixture
async def channel(plane):
    async with grpc.aio.insecure_channel(plane.address) as ch:
        yield ch


async def test_clusters_listeners_and_acks(plane, channel):
    snap = snapshot()
    plane.cache.set(GROUP, snap)
    envoy = FakeEnvoy(channel)

    await envoy.send(CLUSTER)
    cds = await envoy.recv()
    assert (cds.type_url, cds.version_info) == (CLUSTER, snap.type_version(CLUSTER))
    assert names(cds, cluster_pb2.Cluster) == ["a", "b"]
    await envoy.ack(cds)

    await envoy.send(ENDPOINT, names=("b",))
    eds = await envoy.recv()
    assert names(eds, endpoint_pb2.ClusterLoadAssignment) == ["b"]
    await envoy.ack(eds, names=("b",))

    await envoy.send(LISTENER)
    lds = await envoy.recv()
    assert names(lds, listener_pb2.Listener) == ["mcp"]
    await envoy.ack(lds)

    view = await plane.recorder.until(
        lambda v: v.node(NODE_ID) is not None and all(t.acked_version for t in v.node(NODE_ID).types)
    )
    node = view.node(NODE_ID)
    assert node.connected and node.group == GROUP
    assert {t.type_url: t.acked_version for t in node.types} == {
        CLUSTER: cds.version_info,
        ENDPOINT: eds.version_info,
        LISTENER: lds.version_info,
    }

    # the same through the Status gRPC API
    status = await get_status(plane.address)
    [node_pb] = status.nodes
    assert (node_pb.node_id, node_pb.group, node_pb.connected) == (NODE_ID, GROUP, True)
    assert {t.type_url: t.acked_version for t in node_pb.types}[CLUSTER] == cds.version_info
    assert [(g.group, g.snapshot_version) for g in status.groups] == [(GROUP, snap.version)]
    envoy.call.cancel()


async def test_nack_is_recorded_visible_in_status_and_not_resent(plane, channel):
    plane.cache.set(GROUP, snapshot())
    plane.recorder.set_policy_errors(["policies/github.yaml:7: spec.rules[0].tools: empty"])
    envoy = FakeEnvoy(channel)
    await envoy.send(LISTENER)
    bad = await envoy.recv()
    error = "Proto constraint validation failed (McpValidationError.MaxRequestBodySize)"
    await envoy.send(LISTENER, version="", nonce=bad.nonce, error=error)
    await plane.recorder.until(lambda v: v.node(NODE_ID) and v.node(NODE_ID).recent_nacks)

    status = await get_status(plane.address)
    [node] = status.nodes
    [lds] = node.types
    assert (lds.sent_version, lds.acked_version) == (bad.version_info, "")
    assert (lds.last_nack.version, lds.last_nack.error_message) == (bad.version_info, error)
    assert lds.last_nack.time.seconds > 0
    assert [n.error_message for n in node.recent_nacks] == [error]
    assert list(status.policy_errors) == ["policies/github.yaml:7: spec.rules[0].tools: empty"]

    # Republishing content with unchanged listeners must not resend the NACKed version;
    # the next thing on the stream is the fixed version.
    plane.cache.set(GROUP, snapshot(clusters=("z",)))
    fixed = snapshot(clusters=("z",), listener_port=10001)
    plane.cache.set(GROUP, fixed)
    resp = await envoy.recv()
    assert resp.type_url == LISTENER
    assert resp.version_info == fixed.type_version(LISTENER) != bad.version_info
    envoy.call.cancel()


async def test_new_snapshot_is_pushed_to_open_stream(plane, channel):
    first = snapshot()
    plane.cache.set(GROUP, first)
    envoy = FakeEnvoy(channel)
    await envoy.send(CLUSTER)
    cds = await envoy.recv()
    await envoy.ack(cds)

    second = snapshot(clusters=("a", "b", "c"))
    plane.cache.set(GROUP, second)
    pushed = await envoy.recv()
    # the stream order proves nothing was sent in between (no duplicate after the ACK)
    assert pushed.version_info == second.type_version(CLUSTER) != cds.version_info
    assert names(pushed, cluster_pb2.Cluster) == ["a", "b", "c"]
    assert pushed.nonce != cds.nonce
    envoy.call.cancel()


async def test_node_connecting_before_any_snapshot_waits_for_its_group(plane, channel):
    envoy = FakeEnvoy(channel)
    await envoy.send(CLUSTER)
    await plane.recorder.until(lambda v: v.node(NODE_ID) is not None and v.node(NODE_ID).types)
    reading = asyncio.create_task(envoy.recv())

    plane.cache.set("some-other-group", snapshot(clusters=("other",)))
    mine = snapshot(clusters=("mine",))
    plane.cache.set(GROUP, mine)

    resp = await reading
    assert resp.version_info == mine.type_version(CLUSTER)
    assert names(resp, cluster_pb2.Cluster) == ["mine"]
    envoy.call.cancel()


async def test_disconnect_is_recorded_without_error_logs(plane, channel, caplog):
    plane.cache.set(GROUP, snapshot())
    envoy = FakeEnvoy(channel)
    with caplog.at_level(logging.INFO):
        await envoy.send(CLUSTER)
        await envoy.recv()
        envoy.call.cancel()
        view = await plane.recorder.until(lambda v: v.node(NODE_ID) and not v.node(NODE_ID).connected)
    assert view.node(NODE_ID).types[0].sent_version  # the record survives the stream
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_stop_ends_open_streams(plane, channel):
    plane.cache.set(GROUP, snapshot())
    envoy = FakeEnvoy(channel)
    await envoy.send(CLUSTER)
    await envoy.recv()
    await plane.stop(grace=TIMEOUT)
    assert await asyncio.wait_for(envoy.call.read(), TIMEOUT) is grpc.aio.EOF
    assert await envoy.call.code() is grpc.StatusCode.OK


async def test_delta_xds_is_refused_explicitly(plane, channel):
    # The server refuses at stream start, so no request needs to be written
    # (a write could race with the refusal).
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
    assert await asyncio.wait_for(call.code(), TIMEOUT) is grpc.StatusCode.UNIMPLEMENTED


async def test_port_in_use_is_an_error(plane):
    other = ControlPlaneServer(SnapshotCache(), StatusRecorder(), port=plane.port)
    with pytest.raises(OSError):
        await other.start()
