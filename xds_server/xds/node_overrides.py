"""What one Envoy may ask to differ from its group's configuration: its listener's port.

Several Envoys of one gateway share one snapshot (the group is
`node.cluster`). On a fleet each runs on its own host and they listen on the
same port. On one machine (`agentxds up --replicas N`) they cannot: each
Envoy's bootstrap then says, in its node metadata, which port its listeners
take instead of the Gateway's:

    node: {id: ..., cluster: demo, metadata: {"agentxds.dev/listen_port": 10101}}

Only the listeners' TCP port changes (every listener with a socket address);
the versions stay the snapshot's, so `agentxds status` compares replicas as
one gateway. A port that is not an integer in 1-65535 is ignored with a
warning, never half-applied.
"""

from __future__ import annotations

import functools
import logging

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2

log = logging.getLogger(__name__)

LISTEN_PORT_KEY = "agentxds.dev/listen_port"


def listen_port_of(node: base_pb2.Node | None) -> int | None:
    """The listener port `node` asks for in its metadata, or None (the Gateway's own)."""
    if node is None or LISTEN_PORT_KEY not in node.metadata.fields:
        return None
    value = node.metadata.fields[LISTEN_PORT_KEY]
    number = value.number_value if value.WhichOneof("kind") == "number_value" else None
    if number is None or number != int(number) or not 1 <= number <= 65535:
        log.warning("node %r: %s is %s, not a TCP port; its listeners keep the Gateway's port",
                    node.id, LISTEN_PORT_KEY, value)  # fmt: skip
        return None
    return int(number)


def with_listen_port(listeners: tuple[any_pb2.Any, ...], port: int) -> tuple[any_pb2.Any, ...]:
    """`listeners` (packed) with every socket address's port set to `port`."""
    return tuple(_moved(packed.value, port) for packed in listeners)


@functools.lru_cache(maxsize=256)
def _moved(serialized: bytes, port: int) -> any_pb2.Any:
    # Keyed on the bytes: one decode and encode per listener version and port, not per response.
    listener = listener_pb2.Listener.FromString(serialized)
    if listener.address.HasField("socket_address"):
        listener.address.socket_address.port_value = port
    for extra in listener.additional_addresses:
        if extra.address.HasField("socket_address"):
            extra.address.socket_address.port_value = port
    packed = any_pb2.Any()
    packed.Pack(listener)
    return packed
