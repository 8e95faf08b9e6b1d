"""A gateway → its Envoy listener: HTTP connection manager and the filter chain.

The HTTP filter order is the security design, so it lives in one table:

    | # | filter                             | why it is there, why in this place                          |
    |---|------------------------------------|-------------------------------------------------------------|
    | 1 | envoy.filters.http.mcp             | deframes the JSON-RPC body into metadata (method, id,       |
    |   |                                    | params.name, params.uri); rejects what is not one MCP       |
    |   |                                    | message (REJECT_NO_MCP) before anything else sees it        |
    | 1b| envoy.filters.http.jwt_authn       | verifies agent/user JWTs (signature, expiry, issuer,        |
    |   | (when JWT providers are defined)   | audience) and puts their claims in metadata for RBAC;       |
    |   |                                    | after the MCP filter so its errors can carry the request id |
    | 2 | envoy.filters.http.rbac            | allow-list on that metadata + caller identity; per route    |
    |   |                                    | (one route per backend); listener level allows nothing      |
    | 3 | envoy.filters.http.ext_proc        | rewrites list responses per caller; off unless a route      |
    |   |                                    | enables it; before ext_authz so it sees the caller's        |
    |   |                                    | identity headers, which ext_authz strips on delegated       |
    |   |                                    | backends; present only if a backend needs it                |
    | 4 | envoy.filters.http.ext_authz/...   | policy service decisions (conditions, quotas, approvals,    |
    |   | (fail-closed, fail-open)           | tool guard, delegated credentials) after RBAC, so Python    |
    |   |                                    | only sees calls RBAC let through; off unless a route        |
    |   |                                    | enables one (see policy_service.py)                         |
    | 5 | envoy.filters.http.stateful_session| legacy MCP sessions stick to the backend that created them: |
    |   |                                    | the upstream host is sealed into Mcp-Session-Id, so any     |
    |   |                                    | Envoy replica routes a session with no shared store         |
    | 6 | envoy.filters.http.router          | terminal                                                    |

The MCP filter's body limit is kept at or below the connection buffer limit
(a larger body with a smaller buffer limit hangs, see ENVOY notes); `ir.build`
guarantees it.

Before any of these filters, a Gateway with `tls` terminates TLS on the filter
chain (tls.py): certificates and trust bundle over SDS, client certificates
checked at the handshake (mTLS, SPIFFE URI SANs), so RBAC's principals can
match the verified SPIFFE ID.
"""

from __future__ import annotations

from typing import Any

from envoy.config.listener.v3.listener_pb2 import Listener

from xds_server.ir.types import GatewayIR
from xds_server.translate import jwt, policy_service, rbac, tls
from xds_server.translate.local_reply import local_reply_config
from xds_server.translate.names import MCP_METADATA_NAMESPACE, listener_name, route_config_name
from xds_server.translate.proto import to_message, typed, typed_struct

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
MCP_TYPE = "envoy.extensions.filters.http.mcp.v3.Mcp"
TLS_HANDSHAKE_TIMEOUT = "10s"


def mcp_filter(gateway: GatewayIR) -> dict[str, Any]:
    """The MCP deframing filter.

    Sent as a TypedStruct because xds-protos lacks `reject_duplicate_keys`
    (Envoy 1.40 has it). Duplicate keys are rejected: with them, Envoy would
    match RBAC on one `method` value while the backend may act on another.
    """
    config: dict[str, Any] = {
        "traffic_mode": "REJECT_NO_MCP",
        "max_request_body_size": gateway.max_request_body_bytes,
        "reject_duplicate_keys": True,
    }
    if policy_service.gateway_needs_policy_service(gateway):
        # Pick the route again once the body is parsed: policy routes match on method and tool.
        config["clear_route_cache"] = True
    arguments = sorted({m.name for b in gateway.backends for g in b.grants for ag in g.argument_grants
                        for m in ag.arguments})  # fmt: skip
    if arguments:
        # Argument conditions are checked by RBAC on metadata. A parser_config
        # replaces the method's default extraction, so params.name is listed too.
        rules = [{"path": "params.name"}] + [{"path": f"params.arguments.{name}"} for name in arguments]
        config["parser_config"] = {"methods": [{"method": "tools/call", "extraction_rules": rules}]}
    return {"name": MCP_METADATA_NAMESPACE, "typed_config": typed_struct(MCP_TYPE, config)}


def _session_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.stateful_session",
        "typed_config": typed(
            "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
            {
                "session_state": {
                    "name": "envoy.http.stateful_session.envelope",
                    "typed_config": typed(
                        "envoy.extensions.http.stateful_session.envelope.v3.EnvelopeSessionState",
                        {"header": {"name": "mcp-session-id"}},
                    ),
                }
            },
        ),
    }


def http_filters(gateway: GatewayIR) -> list[dict[str, Any]]:
    """The HTTP filters in the order of the table above."""
    python = []
    if policy_service.gateway_needs_policy_service(gateway):
        # ext_proc first: it must see the caller's identity headers before
        # ext_authz strips them on delegated backends (responses run in reverse).
        python = [policy_service.ext_proc_filter(gateway), *policy_service.ext_authz_filters(gateway)]
    authn = jwt.jwt_authn_filter(gateway)
    return [
        mcp_filter(gateway),
        *([authn] if authn is not None else []),
        {"name": rbac.RBAC_FILTER, "typed_config": rbac.listener_rbac()},
        *python,
        _session_filter(),
        {"name": "envoy.filters.http.router", "typed_config": typed("envoy.extensions.filters.http.router.v3.Router")},
    ]


def _access_log(gateway: GatewayIR) -> list[dict[str, Any]]:
    caller = f"%REQ({gateway.identity.trusted_header})%" if gateway.identity.trusted_header else "-"
    # The client certificate's SPIFFE ID, as verified by the handshake.
    peer = " peer=%DOWNSTREAM_PEER_URI_SAN%" if gateway.tls is not None else ""
    line = (
        "[%START_TIME%] " + gateway.name + " %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% "
        f"mcp={{%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:method)% "
        f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:params:name)%}} agent={caller}{peer} "
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
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": typed(HCM_TYPE, hcm)}]
    }
    socket = tls.downstream_transport_socket(gateway)
    if socket is not None:
        chain["transport_socket"] = socket
        # A client that opens a connection and never finishes the handshake is dropped.
        chain["transport_socket_connect_timeout"] = TLS_HANDSHAKE_TIMEOUT
    return chain


def build_listener(gateway: GatewayIR) -> Listener:
    """The listener for `gateway`, taking its routes from RDS over ADS."""
    hcm = {
        "stat_prefix": gateway.name,
        "codec_type": "AUTO",
        # Normalised paths: a route matches the path the backend will see.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "rds": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "route_config_name": route_config_name(gateway.name),
        },
        "http_filters": http_filters(gateway),
        "local_reply_config": local_reply_config(gateway),
        "access_log": _access_log(gateway),
    }
    body = {
        "name": listener_name(gateway.name),
        "address": {"socket_address": {"address": gateway.listen_address, "port_value": gateway.listen_port}},
        "per_connection_buffer_limit_bytes": gateway.connection_buffer_bytes,
        "filter_chains": [_filter_chain(gateway, hcm)],
    }
    return to_message(Listener, body)
