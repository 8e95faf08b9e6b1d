"""Wiring to the policy service: its cluster, the ext_authz / ext_proc filters, per-route enabling.

Python is only on the routes that need it. The filters are installed on the
listener and every route switches off the ones it does not use (a route
without an explicit choice would get them, failing closed):

- `tools/call` of a tool that a conditional rule covers (or of any tool, on a
  backend with a tool guard) goes to a route with ext_authz on;
- the list methods go to a route with ext_proc on (response rewriting), when
  the backend filters lists or guards its tools;
- everything else stays on the backend's native route: MCP filter + RBAC only.

The MCP filter's `clear_route_cache` makes Envoy pick the route again after
the body is parsed, so routes can match on the JSON-RPC method and tool name.
That is also why the filters are not installed `disabled` and enabled per
route: whether a disabled filter runs is settled from the route chosen on the
headers, before the body is read, which is never a metadata-matched route.
A per-route `disabled: true` is read when the filter runs, after the route
was chosen again.

ext_authz speaks gRPC to the policy service, or plain HTTP/1.1 when the
Gateway says `extAuthz: http` (cheaper per call). Over HTTP the backend's
name travels in the path (a per-route `path_prefix`, since context_extensions
are gRPC-only) and only the gateway's identity headers are sent along.

Fail-closed or fail-open is a per-backend choice, but ext_authz's
`failure_mode_allow` is per filter: there are two ext_authz filters, one of
each kind, and a route enables the one its backend asks for. ext_proc can
override it per route.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from xds_server.ir.types import BackendIR, EndpointIR, GatewayIR, NamePattern
from xds_server.translate.cluster import is_ip, load_assignment
from xds_server.translate.names import MCP_METADATA_NAMESPACE
from xds_server.translate.proto import to_message, typed

POLICY_CLUSTER = "agentxds/policy-service"
POLICY_HTTP_CLUSTER = "agentxds/policy-service-http"  # ext_authz over HTTP/1.1
EXT_AUTHZ_CLOSED = "envoy.filters.http.ext_authz/fail-closed"
EXT_AUTHZ_OPEN = "envoy.filters.http.ext_authz/fail-open"
EXT_PROC = "envoy.filters.http.ext_proc"
EXT_AUTHZ_TYPE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_PER_ROUTE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
EXT_PROC_TYPE = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
EXT_PROC_PER_ROUTE = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
LIST_METHODS = ("prompts/list", "resources/list", "resources/templates/list", "tools/list")
BACKEND_METADATA_KEY = "x-agentxds-backend"  # gRPC metadata naming the backend for ext_proc


def gateway_needs_policy_service(gateway: GatewayIR) -> bool:
    return any(b.needs_authz or b.needs_list_processing for b in gateway.backends)


def policy_cluster(endpoint: EndpointIR) -> Cluster:
    """The gRPC (HTTP/2) cluster of the policy service."""
    return _cluster(POLICY_CLUSTER, endpoint, http2=True)


def policy_http_cluster(endpoint: EndpointIR) -> Cluster:
    """The HTTP/1.1 cluster of the policy service's ext_authz (extAuthz: http)."""
    return _cluster(POLICY_HTTP_CLUSTER, endpoint, http2=False)


def _cluster(name: str, endpoint: EndpointIR, *, http2: bool) -> Cluster:
    body: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if is_ip(endpoint.host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": load_assignment(name, (endpoint,)),
    }
    if http2:
        body["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                {"explicit_http_config": {"http2_protocol_options": {}}},
            )
        }
    return to_message(Cluster, body)


def _grpc_service(timeout_ms: int) -> dict[str, Any]:
    return {"envoy_grpc": {"cluster_name": POLICY_CLUSTER}, "timeout": f"{timeout_ms / 1000:.3f}s"}


def _authz_timeout(gateway: GatewayIR) -> int:
    return max((b.policy_service.timeout_ms for b in gateway.backends), default=250)


def _http_service(gateway: GatewayIR, backend: str) -> dict[str, Any]:
    """ext_authz over HTTP: `POST /check/<backend><path>`; denials pass their JSON-RPC body through."""
    return {
        "server_uri": {
            "uri": "http://agentxds-policy-service",
            "cluster": POLICY_HTTP_CLUSTER,
            "timeout": f"{_authz_timeout(gateway) / 1000:.3f}s",
        },  # fmt: skip
        "path_prefix": f"/check/{backend}",
        "authorization_response": {
            "allowed_client_headers": {"patterns": [{"exact": "content-type"}, {"exact": "retry-after"}]},
        },
    }


def _identity_headers(gateway: GatewayIR) -> list[str]:
    """The headers the policy service identifies agents by (all it needs besides the body)."""
    headers = {gateway.identity.api_key_header}
    if gateway.identity.trusted_header:
        headers.add(gateway.identity.trusted_header)
    return sorted(headers)


def ext_authz_filters(gateway: GatewayIR) -> list[dict[str, Any]]:
    """Both ext_authz filters (every route says which, if any, applies to it)."""
    filters = []
    for name, fail_open in ((EXT_AUTHZ_CLOSED, False), (EXT_AUTHZ_OPEN, True)):
        config: dict[str, Any] = {
            "transport_api_version": "V3",
            "failure_mode_allow": fail_open,
            # The service needs the arguments: send the whole body (bounded by
            # the MCP filter's limit, which is already enforced).
            "with_request_body": {"max_request_bytes": gateway.max_request_body_bytes, "allow_partial_message": False},
            "status_on_error": {"code": "ServiceUnavailable"},
        }
        if gateway.ext_authz_http is not None:
            # No route without its own path_prefix reaches the filter; "-" names no backend (refused).
            config["http_service"] = _http_service(gateway, "-")
            config["allowed_headers"] = {"patterns": [{"exact": h} for h in _identity_headers(gateway)]}
        else:
            config["grpc_service"] = _grpc_service(_authz_timeout(gateway))
            # The MCP request (method, tool) and the verified JWT claims (the user).
            config["metadata_context_namespaces"] = [MCP_METADATA_NAMESPACE, "envoy.filters.http.jwt_authn"]
        filters.append({"name": name, "typed_config": typed(EXT_AUTHZ_TYPE, config)})
    return filters


def ext_proc_filter(gateway: GatewayIR) -> dict[str, Any]:
    """The ext_proc filter for list responses (every route says whether it applies)."""
    config = {
        "grpc_service": _grpc_service(_authz_timeout(gateway)),
        "failure_mode_allow": False,
        "processing_mode": {
            "request_header_mode": "SEND",  # who is asking
            "request_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_header_mode": "SEND",
            "response_body_mode": "BUFFERED",  # list responses are short; never a long-lived stream
            "response_trailer_mode": "SKIP",
        },
        "message_timeout": f"{_authz_timeout(gateway) / 1000:.3f}s",
    }
    if gateway.identity.jwt_providers:
        # The verified JWT payloads: agents proven by a token, and the user lists are filtered for.
        config["metadata_options"] = {"forwarding_namespaces": {"untyped": ["envoy.filters.http.jwt_authn"]}}
    if gateway.tls is not None and gateway.tls.trust_bundle_file is not None:
        # Agents proven by a client certificate: the policy service needs its SPIFFE ID.
        config["request_attributes"] = ["connection.uri_san_peer_certificate"]
    return {"name": EXT_PROC, "typed_config": typed(EXT_PROC_TYPE, config)}


def _method_matcher(*methods: str) -> dict[str, Any]:
    values = [{"string_match": {"exact": m}} for m in methods]
    value = values[0] if len(values) == 1 else {"or_match": {"value_matchers": values}}
    return {"filter": MCP_METADATA_NAMESPACE, "path": [{"key": "method"}], "value": value}


def _tool_matcher(patterns: tuple[NamePattern, ...]) -> dict[str, Any]:
    from xds_server.translate.rbac import string_matcher

    values = [string_matcher(p) for p in patterns]
    value = values[0] if len(values) == 1 else {"or_match": {"value_matchers": values}}
    return {"filter": MCP_METADATA_NAMESPACE, "path": [{"key": "params"}, {"key": "name"}], "value": value}


def authz_tools(backend: BackendIR) -> tuple[NamePattern, ...] | None:
    """Tool patterns whose calls go to ext_authz; () means every tool; None means none."""
    if backend.tool_guard is not None:
        return ()
    patterns = sorted({p for rule in backend.conditional_rules for p in rule.tools})
    return tuple(patterns) if patterns else None


def authz_route_match(backend: BackendIR) -> dict[str, Any] | None:
    """Route match for this backend's requests that need the policy service.

    With delegated credentials every request does (the policy service sets the
    backend's credential on each); otherwise the `tools/call`s a conditional
    rule or the tool guard covers.
    """
    if backend.credentials is not None:
        return {"path": backend.route_path}
    tools = authz_tools(backend)
    if tools is None:
        return None
    metadata = [_method_matcher("tools/call")]
    if tools:
        metadata.append(_tool_matcher(tools))
    return {"path": backend.route_path, "dynamic_metadata": metadata}


def list_route_match(backend: BackendIR) -> dict[str, Any] | None:
    if not backend.needs_list_processing:
        return None
    return {"path": backend.route_path, "dynamic_metadata": [_method_matcher(*LIST_METHODS)]}


def _off(type_name: str) -> dict[str, Any]:
    return typed(type_name, {"disabled": True})


def no_policy_filters() -> dict[str, Any]:
    """typed_per_filter_config for a route that needs no policy decision: all three filters off."""
    return {EXT_AUTHZ_CLOSED: _off(EXT_AUTHZ_PER_ROUTE), EXT_AUTHZ_OPEN: _off(EXT_AUTHZ_PER_ROUTE),
            EXT_PROC: _off(EXT_PROC_PER_ROUTE)}  # fmt: skip


def enable_ext_authz(backend: BackendIR, gateway: GatewayIR) -> dict[str, Any]:
    """typed_per_filter_config: the backend's ext_authz filter on (the other and ext_proc off)."""
    name = EXT_AUTHZ_OPEN if backend.policy_service.fail_open else EXT_AUTHZ_CLOSED
    if gateway.ext_authz_http is not None:
        settings = {"http_service": _http_service(gateway, backend.name)}
    else:
        settings = {"context_extensions": {"backend": backend.name}}
    return {**no_policy_filters(), name: typed(EXT_AUTHZ_PER_ROUTE, {"check_settings": settings})}


def _ext_proc_on(backend: BackendIR) -> dict[str, Any]:
    overrides = {
        "failure_mode_allow": backend.policy_service.fail_open,
        "grpc_initial_metadata": [{"key": BACKEND_METADATA_KEY, "value": backend.name}],
    }
    return typed(EXT_PROC_PER_ROUTE, {"overrides": overrides})


def enable_ext_proc(backend: BackendIR) -> dict[str, Any]:
    """typed_per_filter_config: ext_proc on for list responses (ext_authz off)."""
    return {**no_policy_filters(), EXT_PROC: _ext_proc_on(backend)}


def enable_ext_authz_and_ext_proc(backend: BackendIR, gateway: GatewayIR) -> dict[str, Any]:
    """typed_per_filter_config for list requests on a delegated backend: credential and filtering."""
    return {**enable_ext_authz(backend, gateway), EXT_PROC: _ext_proc_on(backend)}
