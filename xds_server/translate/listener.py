"""A gateway → its Envoy listener: HTTP connection manager and the filter chain.

The filters come from the protocols the gateway serves (their translators'
`http_filters`) and from the neutral features (jwt_authn, RBAC, the policy
service, the router), in the one order of `filters.Slot`; see filters.py for
the table and for how each Envoy route treats each filter.

Before any of these filters, a Gateway with `tls` terminates TLS on the filter
chain (tls.py): certificates and trust bundle over SDS, client certificates
checked at the handshake (mTLS, SPIFFE URI SANs), so RBAC's principals can
match the verified SPIFFE ID.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.listener.v3.listener_pb2 import Listener

from xds_server.core.wire import typed
from xds_server.ir.types import GatewayIR, ListenerIR
from xds_server.translate import identity, jwt, policy_service, rbac, request_id, tls, virtual_mcp
from xds_server.translate.cel import IDENTIFIED_AGENT
from xds_server.translate.filters import HttpFilter, Slot, ordered
from xds_server.translate.local_reply import local_reply_config
from xds_server.translate.names import listener_name, scoped_routes_name
from xds_server.translate.proto import to_message
from xds_server.translate.protocols import protocols_of

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CONNECTION_LIMIT_TYPE = "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
TLS_HANDSHAKE_TIMEOUT = "10s"
ROUTER = HttpFilter("envoy.filters.http.router", Slot.TERMINAL, typed("envoy.extensions.filters.http.router.v3.Router"))


def listener_filters(gateway: GatewayIR) -> list[HttpFilter]:
    """Every HTTP filter of the gateway's listener, in slot order."""
    optional = [identity.unambiguous_filter(gateway), jwt.jwt_authn_filter(gateway)]
    identify = identity.identify_filter(gateway)
    return ordered(
        [
            request_id.id_filter(gateway),
            *(f for protocol in protocols_of(gateway) for f in protocol.http_filters(gateway)),
            *(f for f in optional if f is not None),
            *([identify] if identify is not None else []),
            rbac.covered_filter(),
            rbac.rbac_filter(),
            *policy_service.policy_filters(gateway),
            *virtual_mcp.http_filters(gateway),
            ROUTER,
        ]
    )


def _access_log(gateway: GatewayIR) -> list[dict[str, Any]]:
    # The agent Envoy recognised (the identify filter's verdict, whatever proved it: header, key, JWT,
    # certificate), not a header the client sent; "-" when the request proves none.
    caller = IDENTIFIED_AGENT
    # The client certificate's SPIFFE ID, as verified by the handshake.
    peer = " peer=%DOWNSTREAM_PEER_URI_SAN%" if gateway.listener.tls is not None else ""
    fields = " ".join(p.access_log_field for p in protocols_of(gateway))
    line = (
        "[%START_TIME%] " + gateway.name + " %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% "
        f"{fields} agent={caller}{peer} "
        "-> %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %DURATION%ms backend=%ROUTE_NAME%\n"
    )
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": typed(
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                {"log_format": {"text_format_source": {"inline_string": line}}},
            ),
        }
    ]


def _filter_chain(gateway: GatewayIR, hcm: dict[str, Any]) -> dict[str, Any]:
    manager = {"name": "envoy.filters.network.http_connection_manager", "typed_config": typed(HCM_TYPE, hcm)}
    chain: dict[str, Any] = {"filters": [*_connection_limit(gateway), manager]}
    socket = tls.downstream_transport_socket(gateway)
    if socket is not None:
        chain["transport_socket"] = socket
        # A client that opens a connection and never finishes the handshake is dropped.
        chain["transport_socket_connect_timeout"] = TLS_HANDSHAKE_TIMEOUT
    return chain


def _duration(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}s"


def _hcm_limits(listener: ListenerIR) -> dict[str, Any]:
    """The HCM's time and header limits. A zero timeout is left out: Envoy then applies none."""
    limits: dict[str, Any] = {
        "max_request_headers_kb": listener.max_request_headers_kib,
        "common_http_protocol_options": {"max_headers_count": listener.max_headers},
    }
    if listener.request_headers_timeout_ms:
        # Slowloris: a connection that trickles its headers is closed (Envoy's default is no limit).
        limits["request_headers_timeout"] = _duration(listener.request_headers_timeout_ms)
    if listener.request_receive_timeout_ms:
        # A trickled body: disarmed once the request is received, so SSE answers are not bounded.
        limits["request_timeout"] = _duration(listener.request_receive_timeout_ms)
    if listener.connection_idle_timeout_ms:
        limits["common_http_protocol_options"]["idle_timeout"] = _duration(listener.connection_idle_timeout_ms)
    return limits


def _connection_limit(gateway: GatewayIR) -> list[dict[str, Any]]:
    """The listener's own connection cap (network filter, before the HCM), if the Gateway sets one."""
    if gateway.listener.max_connections is None:
        return []
    config = {"stat_prefix": gateway.name, "max_connections": gateway.listener.max_connections}
    return [{"name": "envoy.filters.network.connection_limit", "typed_config": typed(CONNECTION_LIMIT_TYPE, config)}]


def build_listener(gateway: GatewayIR) -> Listener:
    """The listener for `gateway`, taking a route configuration per path (SRDS, then RDS, over ADS)."""
    hcm = {
        "stat_prefix": gateway.name,
        "codec_type": "AUTO",
        # Normalised paths: a route matches the path the backend will see.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "scoped_routes": {
            "name": scoped_routes_name(gateway.name),
            # The key is the (normalised) path up to its query: each route's exact path is a scope.
            "scope_key_builder": {
                "fragments": [{"header_value_extractor": {"name": ":path", "element_separator": "?", "index": 0}}]
            },
            "rds_config_source": {"ads": {}, "resource_api_version": "V3"},
            "scoped_rds": {"scoped_rds_config_source": {"ads": {}, "resource_api_version": "V3"}},
        },  # fmt: skip
        "http_filters": [f.as_config() for f in listener_filters(gateway)],
        "local_reply_config": local_reply_config(gateway),
        "access_log": _access_log(gateway),
    }
    hcm |= _hcm_limits(gateway.listener)
    listener = gateway.listener
    body = {
        "name": listener_name(gateway.name),
        "address": {"socket_address": {"address": listener.address, "port_value": listener.port}},
        "per_connection_buffer_limit_bytes": listener.connection_buffer_bytes,
        "filter_chains": [_filter_chain(gateway, hcm)],
    }
    return to_message(Listener, body)


def extension_configs(gateway: GatewayIR) -> tuple[TypedExtensionConfig, ...]:
    """The configurations of the listener's discovered filters (ECDS), by name; and, for each filter
    that can be discovered but is not in this listener, its idle configuration.

    Why the idle ones: a listener that loses a filter (the last JWT provider or recognisable agent
    gone) is replaced, but connections opened before keep the old listener, whose filter still
    names its configuration. Envoy keeps the last configuration it had for a name no response
    carries any more (verified with Envoy 1.40), so without these those connections would go on
    verifying tokens with withdrawn keys, or naming removed agents, until they drain."""
    present = {f.name: f for f in listener_filters(gateway) if f.discovered}
    for idle in (*identity.idle_filters(), jwt.idle_filter()):
        present.setdefault(idle.name, idle)
    found = [to_message(TypedExtensionConfig, f.extension_config()) for f in present.values()]
    return tuple(sorted(found, key=lambda c: c.name))
