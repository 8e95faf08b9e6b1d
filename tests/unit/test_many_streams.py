"""Twenty ADS streams on one control plane, each driven like Envoy drives ADS: wildcard CDS, LDS and SRDS;
EDS for the EDS clusters; ECDS for the filter configurations the listener names; RDS for the route
configurations the scopes name; every response ACKed.

After one policy file is edited, every stream is sent the one route configuration that changed (and
nothing of the types that did not), and all twenty ACK the same version of every type.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.policy_gen import PolicySetShape, edit_rule, write_policy_set
from xds_server.controlplane.service import ControlPlane
from xds_server.xds import snapshot as xds

from .xds_fixtures import request

STREAMS = 20
TIMEOUT = 30  # a safety net against hangs, never a timing assertion
SHAPE = PolicySetShape(agents=100, backends=10, tools=20, per_rule=5, backends_per_agent=3)


class EnvoyLikeClient:
    """One ADS stream, subscribing and ACKing as Envoy does; keeps what it was sent, by type and name."""

    def __init__(self, channel: grpc.aio.Channel, node: str) -> None:
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.node = node
        self.held: dict[str, dict[str, bytes]] = {}
        self.responses: list[discovery_pb2.DiscoveryResponse] = []
        self.names: dict[str, tuple[str, ...]] = {}

    async def run(self) -> None:
        await self.call.write(request(xds.CLUSTER, node=True, node_id=self.node, group="scale"))
        await self.call.write(request(xds.LISTENER))
        while True:
            resp = await self.call.read()
            if resp is grpc.aio.EOF:
                return
            self.responses.append(resp)
            held = self.held.setdefault(resp.type_url, {})
            if resp.type_url in xds.WILDCARD_TYPES:
                held.clear()
            for any_ in resp.resources:
                held[self._name(resp.type_url, any_)] = any_.value
            await self.call.write(request(resp.type_url, resp.version_info, resp.nonce,
                                          names=self.names.get(resp.type_url, ())))  # fmt: skip
            await self._follow(resp)

    @staticmethod
    def _http_filters(resp: discovery_pb2.DiscoveryResponse) -> list[Any]:
        found = []
        for any_ in resp.resources:
            listener = listener_pb2.Listener()
            any_.Unpack(listener)
            for chain in listener.filter_chains:
                for network_filter in chain.filters:
                    hcm = hcm_pb2.HttpConnectionManager()
                    if network_filter.typed_config.Unpack(hcm):
                        found += hcm.http_filters
        return found

    def _name(self, type_url: str, any_: Any) -> str:
        kinds = {xds.CLUSTER: cluster_pb2.Cluster, xds.ROUTE: route_pb2.RouteConfiguration,
                 xds.SCOPED_ROUTE: scoped_route_pb2.ScopedRouteConfiguration}  # fmt: skip
        if type_url in kinds:
            message = kinds[type_url]()
            any_.Unpack(message)
            return message.name  # type: ignore[no-any-return]
        return f"{type_url}#{len(self.held.get(type_url, {}))}"

    async def _follow(self, resp: discovery_pb2.DiscoveryResponse) -> None:
        """Subscribe to what a response names, as Envoy does."""
        if resp.type_url == xds.LISTENER and xds.SCOPED_ROUTE not in self.names:
            self.names[xds.SCOPED_ROUTE] = ()
            await self.call.write(request(xds.SCOPED_ROUTE))
        if resp.type_url == xds.LISTENER:
            discovered = sorted(f.name for f in self._http_filters(resp) if f.HasField("config_discovery"))
            if tuple(discovered) != self.names.get(xds.EXTENSION_CONFIG, ()):
                self.names[xds.EXTENSION_CONFIG] = tuple(discovered)
                await self.call.write(request(xds.EXTENSION_CONFIG, names=self.names[xds.EXTENSION_CONFIG]))
        if resp.type_url == xds.CLUSTER:
            eds = []
            for any_ in resp.resources:
                cluster = cluster_pb2.Cluster()
                any_.Unpack(cluster)
                if cluster.type == cluster_pb2.Cluster.EDS:
                    eds.append(cluster.name)
            if tuple(sorted(eds)) != self.names.get(xds.ENDPOINT):
                self.names[xds.ENDPOINT] = tuple(sorted(eds))
                await self.call.write(request(xds.ENDPOINT, names=self.names[xds.ENDPOINT]))
        if resp.type_url == xds.SCOPED_ROUTE:
            configs = []
            for any_ in resp.resources:
                scope = scoped_route_pb2.ScopedRouteConfiguration()
                any_.Unpack(scope)
                configs.append(scope.route_configuration_name)
            if tuple(sorted(set(configs))) != self.names.get(xds.ROUTE):
                self.names[xds.ROUTE] = tuple(sorted(set(configs)))
                await self.call.write(request(xds.ROUTE, names=self.names[xds.ROUTE]))


async def test_twenty_streams_all_ack_the_same_version_and_get_only_what_changed(tmp_path: Path) -> None:
    write_policy_set(tmp_path, SHAPE)
    control = ControlPlane(tmp_path, port=0, debounce_ms=20)
    await control.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{control.port}")
    clients = [EnvoyLikeClient(channel, f"envoy-{i}") for i in range(STREAMS)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    try:
        first = control.cache.get("scale")
        assert first is not None
        await _all_acked(control, first)
        assert all(c.held[xds.ROUTE].keys() == set(first.names(xds.ROUTE)) for c in clients)
        sent_before = [len(c.responses) for c in clients]

        reloads = control.reloads
        edited = edit_rule(tmp_path, 3, random.Random(5))
        await asyncio.wait_for(_reloaded(control, reloads), TIMEOUT)
        second = control.cache.get("scale")
        assert second is not None and second.version != first.version
        changed = {t for t in xds.ORDER if second.type_version(t) != first.type_version(t)}
        assert changed == {xds.ROUTE}, changed  # only the policy's route configuration: no listener change
        await _all_acked(control, second)
        for client, before in zip(clients, sent_before, strict=True):
            (update,) = client.responses[before:]  # one response each, of RDS, with one resource
            assert update.type_url == xds.ROUTE and len(update.resources) == 1
            assert client.held[xds.ROUTE] == {
                name: a.value for name, a in zip(second.names(xds.ROUTE), second.anys[xds.ROUTE], strict=True)}  # fmt: skip
        assert edited.name == "p3.yaml"
    finally:
        for task in tasks:
            task.cancel()
        await channel.close()
        await control.stop()


async def _reloaded(control: ControlPlane, reloads: int) -> None:
    while control.reloads <= reloads:
        await asyncio.sleep(0.01)


async def _all_acked(control: ControlPlane, snap: xds.Snapshot) -> None:
    def done() -> bool:
        nodes = [n for n in control.recorder.view().nodes if n.group == "scale" and n.connected]
        want = {t: snap.type_version(t) for t in xds.ORDER if t != xds.SECRET}
        return len(nodes) == STREAMS and all({t.type_url: t.acked_version for t in n.types} == want for n in nodes)

    async def wait() -> None:
        while not done():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), TIMEOUT)
