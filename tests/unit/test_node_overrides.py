"""A node's listen-port override: read from its metadata, applied to the listeners it is sent."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2, struct_pb2

from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.xds.node_overrides import LISTEN_PORT_KEY, listen_port_of, with_listen_port


def node(**metadata: object) -> base_pb2.Node:
    out = base_pb2.Node(id="envoy-2", cluster="demo")
    out.metadata.CopyFrom(struct_pb2.Struct())
    out.metadata.update(metadata)
    return out


def test_the_port_comes_from_the_bootstrap_node_metadata() -> None:
    bootstrap = render_bootstrap(node_id="envoy-2", node_cluster="demo", xds_host="127.0.0.1", xds_port=18000,
                                 admin_port=0, listen_port=10102)  # fmt: skip
    assert bootstrap["node"]["metadata"] == {LISTEN_PORT_KEY: 10102}
    assert listen_port_of(node(**bootstrap["node"]["metadata"])) == 10102
    plain = render_bootstrap(node_id="e", node_cluster="demo", xds_host="127.0.0.1", xds_port=18000, admin_port=0)
    assert "metadata" not in plain["node"]


@pytest.mark.parametrize("value", [0, 70000, 10.5, "10102", True])
def test_a_port_that_is_not_a_port_is_ignored(value: object) -> None:
    assert listen_port_of(node(**{LISTEN_PORT_KEY: value})) is None


def test_no_metadata_no_override() -> None:
    assert listen_port_of(None) is None
    assert listen_port_of(node()) is None


def test_only_the_listeners_port_changes() -> None:
    listener = listener_pb2.Listener(name="demo")
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = 10100
    listener.per_connection_buffer_limit_bytes.value = 65536
    packed = any_pb2.Any()
    packed.Pack(listener)
    (moved,) = with_listen_port((packed,), 10102)
    out = listener_pb2.Listener()
    moved.Unpack(out)
    assert out.address.socket_address.port_value == 10102
    assert out.address.socket_address.address == "127.0.0.1"
    out.address.socket_address.port_value = 10100
    assert out == listener
    assert with_listen_port((packed,), 10102)[0] is moved  # decoded once per listener version and port
