"""Small real Envoy resources and requests shared by the xDS unit tests."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2 as rpc_status_pb2

from xds_server.xds.ads import EventKind, StreamState, next_response, on_request
from xds_server.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

NODE_ID = "gw-1"
GROUP = "mcp-gateway"


def cluster(name: str, timeout_s: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.seconds = timeout_s
    c.eds_cluster_config.eds_config.ads.SetInParent()
    return c


def cla(name: str, port: int = 8080) -> endpoint_pb2.ClusterLoadAssignment:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    ep = a.endpoints.add().lb_endpoints.add().endpoint
    ep.address.socket_address.address = "127.0.0.1"
    ep.address.socket_address.port_value = port
    return a


def listener(name: str, port: int = 10000) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    return lst


def route(name: str, prefix: str = "/") -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name="all", domains=["*"])
    vh.routes.add().match.prefix = prefix
    return rc


def snapshot(
    clusters: tuple[str, ...] = ("a", "b"),
    listeners: tuple[str, ...] = ("mcp",),
    routes: tuple[str, ...] = ("r1", "r2"),
    port: int = 8080,
    listener_port: int = 10000,
) -> Snapshot:
    """A consistent snapshot; `port`/`listener_port` change EDS/LDS content only."""
    return Snapshot.build(
        {
            CLUSTER: [cluster(c) for c in clusters],
            ENDPOINT: [cla(c, port) for c in clusters],
            LISTENER: [listener(n, listener_port) for n in listeners],
            ROUTE: [route(r) for r in routes],
        }
    )


def request(
    type_url: str,
    version: str = "",
    nonce: str = "",
    names: tuple[str, ...] = (),
    error: str | None = None,
    node: bool = False,
    node_id: str = NODE_ID,
    group: str = GROUP,
) -> discovery_pb2.DiscoveryRequest:
    """A DiscoveryRequest as Envoy sends it; `error` makes it a NACK."""
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, version_info=version, response_nonce=nonce, resource_names=list(names)
    )
    if node:
        req.node.CopyFrom(base_pb2.Node(id=node_id, cluster=group))
    if error is not None:
        req.error_detail.CopyFrom(rpc_status_pb2.Status(code=13, message=error))
    return req


def drain(state: StreamState, snap: Snapshot | None) -> tuple[StreamState, list]:
    """All responses next_response would send now, in order."""
    out = []
    while True:
        state, resp = next_response(state, snap)
        if resp is None:
            return state, out
        out.append(resp)


def ack(state: StreamState, resp, names: tuple[str, ...] = ()) -> StreamState:
    """Envoy's ACK of `resp` (asserts the state machine reads it as one)."""
    state, event = on_request(state, request(resp.type_url, resp.version_info, resp.nonce, names))
    assert event.kind is EventKind.ACK
    return state


def gateway_snapshot(type_url: str, resources: list[Message], port: int = 10000) -> Snapshot:
    """One gateway's snapshot: a cluster and its endpoints, `resources` of a named type (secrets, filter
    configurations) that its listener (on `port`) would name, and one route configuration."""
    return Snapshot.build(
        {
            CLUSTER: [cluster("a")],
            ENDPOINT: [cla("a")],
            type_url: resources,
            LISTENER: [listener("gateway/gw", port)],
            ROUTE: [route("gateway/gw/routes")],
        }
    )


def resource_names(resp: discovery_pb2.DiscoveryResponse, message_type: type[Message]) -> list[str]:
    """The names of the resources `resp` carries, unpacked as `message_type`, in order."""
    out = []
    for any_msg in resp.resources:
        msg = message_type()
        assert any_msg.Unpack(msg)
        out.append(msg.name)
    return out
