"""Wiring to the policy service: its clusters, the ext_authz / ext_proc filters, per-route enabling.

Python is only on the routes that need it (`RouteIR.decisions`, decided in the
IR for the translators and the policy service alike). The filters are on the
listener and switched off on every route that does not enable them (their
`route_default` is OFF, see filters.py), which fails closed if a route ever
enabled one it was not configured for:

- the calls the policy service decides on (the protocol's `call_match`) go to
  a route with ext_authz on;
- the requests whose responses it rewrites (`response_match`) go to a route
  with ext_proc on;
- a route with delegated credentials has ext_authz on for every request;
- everything else stays on the route's native Envoy route: RBAC only.

On the routes with ext_authz on, it still runs only for a call that RBAC let
through by a policy the policy service must confirm (its name starts with
`python/`, translate/rbac.py): a call that a grant without conditions or a
native rule (`cond/...`) allows never leaves Envoy, even when other callers'
rules send the same tool to the policy service. On a route where the policy
service must see every call (a tool guard) or every request (delegated
credentials), every policy's name starts with `python/`.

The protocol filter clears the route cache, so routes can match on what it
deframed. That is also why the filters are not installed `disabled` and
enabled per route: whether a disabled filter runs is settled from the route
chosen on the headers, before the body is read, which is never a
metadata-matched route. A per-route `disabled: true` is read when the filter
runs, after the route was chosen again.

ext_authz speaks plain HTTP/1.1 to the policy service (`extAuthz: http`, the
default: cheaper per call) or gRPC. Over HTTP the route's name travels in
the path (a per-route `path_prefix`, since context_extensions are gRPC-only);
of the client's headers only those the service reads are sent along (the
gateway's identity headers; user tokens where credentials are delegated),
and what Envoy verified (JWT payloads, the client certificate's URI SANs)
goes in headers Envoy adds to the check request itself, overriding any
client copy (core/wire.py). A delegated credential comes back as an answer
header Envoy copies upstream, with `x-envoy-auth-headers-to-remove` naming
the caller's credentials to drop.

Fail-closed or fail-open is a per-route choice, but ext_authz's
`failure_mode_allow` is per filter: there are two ext_authz filters, one of
each kind, and a route enables the one it asks for. ext_proc can override it
per route.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from xds_server.core.wire import (
    CHECK_PREFIX,
    JSONRPC_METADATA_NAMESPACE,
    JWT_METADATA_NAMESPACE,
    PEER_URI_SAN_ATTRIBUTE,
    POLICY_HTTP_IDLE_TIMEOUT_S,
    POLICY_SERVICE_SECRET_HEADER,
    PURPOSE_EXCHANGE,
    PURPOSE_METADATA_KEY,
    PURPOSE_RESPONSES,
    PURPOSE_SEAL,
    PURPOSE_UNSEAL,
    REPLY_STATUS_HEADER,
    ROUTE_CONTEXT_EXTENSION,
    ROUTE_METADATA_KEY,
    VERIFIED_JWT_HEADER_PREFIX,
    VERIFIED_PEER_HEADER,
    typed,
)
from xds_server.ir.principals import AnonymousPrincipal
from xds_server.ir.types import EndpointIR, GatewayIR, RouteIR, UpstreamTlsIR
from xds_server.translate.cel import RBAC_NAMESPACE
from xds_server.translate.cluster import is_ip, load_assignment, tls_transport_socket
from xds_server.translate.filters import FilterUses, HttpFilter, RouteDefault, Slot, disabled
from xds_server.translate.names import DECIDED_PREFIX, EFFECTIVE_POLICY_KEY
from xds_server.translate.proto import to_message
from xds_server.translate.protocols import protocols_of

POLICY_CLUSTER = "agentxds/policy-service"
POLICY_HTTP_CLUSTER = "agentxds/policy-service-http"  # ext_authz over HTTP/1.1
EXT_AUTHZ_CLOSED = "envoy.filters.http.ext_authz/fail-closed"
EXT_AUTHZ_OPEN = "envoy.filters.http.ext_authz/fail-open"
EXT_PROC = "envoy.filters.http.ext_proc"
EXT_AUTHZ_TYPE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_PER_ROUTE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
EXT_PROC_TYPE = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
EXT_PROC_PER_ROUTE = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


def policy_cluster(endpoint: EndpointIR, tls: UpstreamTlsIR | None = None) -> Cluster:
    """The gRPC (HTTP/2) cluster of the policy service."""
    return _cluster(POLICY_CLUSTER, endpoint, http2=True, tls=tls)


def policy_http_cluster(endpoint: EndpointIR, tls: UpstreamTlsIR | None = None) -> Cluster:
    """The HTTP/1.1 cluster of the policy service's ext_authz (extAuthz: http)."""
    return _cluster(POLICY_HTTP_CLUSTER, endpoint, http2=False, tls=tls)


def policy_clusters(gateway: GatewayIR) -> list[Cluster]:
    """The policy service's clusters, when some route of `gateway` needs it (over TLS with
    `policyService.tls`)."""
    if not gateway.needs_policy_service or gateway.policy_service is None:
        return []
    tls = gateway.policy_service_tls
    clusters = [policy_cluster(gateway.policy_service, tls)]
    if gateway.ext_authz_http is not None:
        clusters.append(policy_http_cluster(gateway.ext_authz_http, tls))
    return clusters


def _cluster(name: str, endpoint: EndpointIR, *, http2: bool, tls: UpstreamTlsIR | None) -> Cluster:
    body: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if is_ip(endpoint.host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": load_assignment(name, (endpoint,)),
    }
    if tls is not None:
        # gRPC servers refuse a TLS client that does not negotiate h2 (ALPN).
        body["transport_socket"] = tls_transport_socket(tls, (endpoint,), ("h2",) if http2 else ("http/1.1",))
    if http2:
        options: dict[str, Any] = {"explicit_http_config": {"http2_protocol_options": {}}}
    else:
        # Envoy closes an idle connection before the service would (core/wire.py): never one in reuse.
        options = {"explicit_http_config": {"http_protocol_options": {}},
                   "common_http_protocol_options": {"idle_timeout": f"{POLICY_HTTP_IDLE_TIMEOUT_S}s"}}  # fmt: skip
    body["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", options
        )
    }
    return to_message(Cluster, body)


def _grpc_service(gateway: GatewayIR, timeout_ms: int) -> dict[str, Any]:
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": POLICY_CLUSTER}, "timeout": f"{timeout_ms / 1000:.3f}s"}
    if (secret := secret_header(gateway)) is not None:
        service["initial_metadata"] = [secret]  # merged with the per-route ext_proc metadata (route, purpose)
    return service


def secret_header(gateway: GatewayIR) -> dict[str, str] | None:
    """The gateway's `policyService.secret` as the header (or gRPC metadata) Envoy sends with every request
    to the policy service, which refuses the gateway's requests without it (None: the gateway has none).
    Its alphabet has no `%` (ir/materials.py), so it is the same in Envoy's header formatters."""
    secret = gateway.policy_service_secret
    return {"key": POLICY_SERVICE_SECRET_HEADER, "value": secret.value} if secret is not None else None


def secret_route_headers(gateway: GatewayIR) -> dict[str, Any]:
    """The header edits of a route whose upstream is the policy service (virtual servers, discovery): its
    secret set, over any client copy ({} when the gateway has none)."""
    secret = secret_header(gateway)
    if secret is None:
        return {}
    return {"request_headers_to_add": [{"header": secret, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}


def _authz_timeout(gateway: GatewayIR) -> int:
    return max((r.policy_service.timeout_ms for r in gateway.routes), default=250)


def verified_identity_headers(gateway: GatewayIR) -> list[dict[str, Any]]:
    """What Envoy verified, as headers it adds to the check request alone (core/wire.py): each JWT
    provider's payload, and the client certificate's URI SANs. An empty value (nothing verified)
    adds no header."""
    headers = [{"key": f"{VERIFIED_JWT_HEADER_PREFIX}{p.name}", "value": f"%DYNAMIC_METADATA({JWT_METADATA_NAMESPACE}:{p.name})%"}
               for p in gateway.identity.jwt_providers]  # fmt: skip
    if gateway.listener.tls is not None and gateway.listener.tls.trust_bundle_file is not None:
        headers.append({"key": VERIFIED_PEER_HEADER, "value": "%DOWNSTREAM_PEER_URI_SAN%"})
    return headers


def _credential_headers(gateway: GatewayIR) -> list[str]:
    """The upstream headers delegated credentials are set in (the answer's headers Envoy copies)."""
    return sorted({r.credentials.header for r in gateway.routes if r.credentials is not None})


def _http_service(gateway: GatewayIR, route: str) -> dict[str, Any]:
    """ext_authz over HTTP: `POST /check/<route><path>` with the verified identity; denials pass their
    JSON-RPC body through, allowed answers may set a delegated credential."""
    response: dict[str, Any] = {
        "allowed_client_headers": {
            "patterns": [{"exact": h} for h in ("content-type", "retry-after", REPLY_STATUS_HEADER)]
        },  # fmt: skip
    }
    if credentials := _credential_headers(gateway):
        response["allowed_upstream_headers"] = {"patterns": [{"exact": h} for h in credentials]}
    service: dict[str, Any] = {
        "server_uri": {
            "uri": "http://agentxds-policy-service",
            "cluster": POLICY_HTTP_CLUSTER,
            "timeout": f"{_authz_timeout(gateway) / 1000:.3f}s",
        },  # fmt: skip
        "path_prefix": f"{CHECK_PREFIX}{route}",
        "authorization_response": response,
    }
    # What Envoy verified, and the secret that shows the service the check is Envoy's.
    added = verified_identity_headers(gateway)
    if (secret := secret_header(gateway)) is not None:
        added.append(secret)
    if added:
        service["authorization_request"] = {"headers_to_add": added}
    return service


def _identity_headers(gateway: GatewayIR) -> list[str]:
    """The client's headers the policy service reads (besides the body and what Envoy verified): those
    it identifies agents by, and the user tokens it exchanges on routes with delegated credentials."""
    headers = {gateway.identity.api_key_header}
    if gateway.identity.trusted_header:
        headers.add(gateway.identity.trusted_header)
    if any(r.credentials is not None for r in gateway.routes):
        headers.update(p.token_header for p in gateway.identity.jwt_providers)
    for agent in gateway.agents:
        # The anonymous agent is proven by the absence of every credential header.
        headers.update(h for p in agent.principals if isinstance(p, AnonymousPrincipal) for h in p.headers)
    return sorted(headers)


def _ext_authz(gateway: GatewayIR, name: str, *, fail_open: bool) -> HttpFilter:
    config: dict[str, Any] = {
        "transport_api_version": "V3",
        "failure_mode_allow": fail_open,
        # The service needs the arguments: send the whole body (bounded by
        # the protocol filter's limit, which is already enforced).
        "with_request_body": {
            "max_request_bytes": gateway.listener.max_request_body_bytes,
            "allow_partial_message": False,
        },
        "status_on_error": {"code": "ServiceUnavailable"},
        # Only calls RBAC let through by a policy the policy service must confirm: a call a grant
        # or a native rule allows is decided (translate/rbac.py names the policies so).
        "filter_enabled_metadata": {
            "filter": RBAC_NAMESPACE,
            "path": [{"key": EFFECTIVE_POLICY_KEY}],
            "value": {"string_match": {"prefix": DECIDED_PREFIX}},
        },
    }
    if gateway.ext_authz_http is not None:
        # No route without its own path_prefix reaches the filter; "-" names no route (refused).
        config["http_service"] = _http_service(gateway, "-")
        config["allowed_headers"] = {"patterns": [{"exact": h} for h in _identity_headers(gateway)]}
    else:
        config["grpc_service"] = _grpc_service(gateway, _authz_timeout(gateway))
        # The request as the protocol filter deframed it (method, tool) and the verified JWT claims (the user).
        namespaces = [p.metadata_namespace for p in protocols_of(gateway)]
        config["metadata_context_namespaces"] = [*namespaces, JWT_METADATA_NAMESPACE]
    # Discovered (ECDS): a changed secret, timeout or identity header reaches open connections at once.
    return HttpFilter(name, Slot.DECISIONS, typed(EXT_AUTHZ_TYPE, config), RouteDefault.OFF,
                      disabled(EXT_AUTHZ_PER_ROUTE), discovered=True)  # fmt: skip


_INERT_MODE = {
    "request_header_mode": "SKIP", "request_body_mode": "NONE", "request_trailer_mode": "SKIP",
    "response_header_mode": "SKIP", "response_body_mode": "NONE", "response_trailer_mode": "SKIP",
}  # fmt: skip
_RESPONSE_REWRITE_MODE = {
    "request_header_mode": "SEND",  # who is asking
    "request_body_mode": "NONE",
    "request_trailer_mode": "SKIP",
    "response_header_mode": "SEND",
    "response_body_mode": "BUFFERED",  # list responses are short; never a long-lived stream
    "response_trailer_mode": "SKIP",
}
#: What ext_proc is sent, per purpose (core/wire.py). Answers that may carry ids to seal stream on
#: to the client as they come (a call's progress, a task's result that waits for its end: never
#: held back); unsealing needs the request's body too (short: it names a task).
_SEALING_MODE = {**_RESPONSE_REWRITE_MODE, "response_body_mode": "STREAMED"}
_MODES = {
    PURPOSE_RESPONSES: _RESPONSE_REWRITE_MODE,
    PURPOSE_SEAL: _SEALING_MODE,
    PURPOSE_UNSEAL: {**_SEALING_MODE, "request_body_mode": "BUFFERED"},
    # The whole request read (strictly), its ids opened; the answer streamed and rewritten (A2A).
    PURPOSE_EXCHANGE: {**_SEALING_MODE, "request_body_mode": "BUFFERED"},
}


def _ext_proc(gateway: GatewayIR) -> HttpFilter:
    config = {
        "grpc_service": _grpc_service(gateway, _authz_timeout(gateway)),
        "failure_mode_allow": False,
        # Inert at the listener level: a reply Envoy makes before any route is chosen (a
        # malformed HTTP/1 request) must not wait on the policy service, which dropped it
        # unanswered (verified with Envoy 1.40). Routes that rewrite responses turn it on.
        "processing_mode": _INERT_MODE,
        "message_timeout": f"{_authz_timeout(gateway) / 1000:.3f}s",
    }
    # The request's id as read before any protocol filter: a stream that never sees the request's body
    # (a list's) still answers with its exact id.
    forwarded = [JSONRPC_METADATA_NAMESPACE]
    if any(r.decisions.tasks for r in gateway.routes):
        # What the protocol filter deframed: the tool a task is created by.
        forwarded += [p.metadata_namespace for p in protocols_of(gateway)]
    if gateway.identity.jwt_providers:
        # The verified JWT payloads: agents proven by a token, and the user lists are filtered for.
        forwarded.append(JWT_METADATA_NAMESPACE)
    if forwarded:
        config["metadata_options"] = {"forwarding_namespaces": {"untyped": forwarded}}
    tls = gateway.listener.tls
    if tls is not None and tls.trust_bundle_file is not None:
        # Agents proven by a client certificate: the policy service needs its SPIFFE ID.
        config["request_attributes"] = [PEER_URI_SAN_ATTRIBUTE]
    return HttpFilter(EXT_PROC, Slot.RESPONSES, typed(EXT_PROC_TYPE, config), RouteDefault.OFF,
                      disabled(EXT_PROC_PER_ROUTE), discovered=True)  # fmt: skip


def policy_filters(gateway: GatewayIR) -> list[HttpFilter]:
    """ext_proc and both ext_authz filters, when some route of `gateway` needs the policy service."""
    if not gateway.needs_policy_service:
        return []
    # ext_proc first: it must see the caller's identity headers before
    # ext_authz strips them on delegated routes (responses run in reverse).
    return [
        _ext_proc(gateway),
        _ext_authz(gateway, EXT_AUTHZ_CLOSED, fail_open=False),
        _ext_authz(gateway, EXT_AUTHZ_OPEN, fail_open=True),
    ]


# ---------------------------------------------------------------- per route


def ext_authz_use(route: RouteIR, gateway: GatewayIR) -> FilterUses:
    """The route's ext_authz filter on (the one matching its failure mode); the others stay off."""
    name = EXT_AUTHZ_OPEN if route.policy_service.fail_open else EXT_AUTHZ_CLOSED
    if gateway.ext_authz_http is not None:
        settings = {"http_service": _http_service(gateway, route.name)}
    else:
        settings = {"context_extensions": {ROUTE_CONTEXT_EXTENSION: route.name}}
    return {name: typed(EXT_AUTHZ_PER_ROUTE, {"check_settings": settings})}


def ext_proc_use(route: RouteIR, purpose: str = PURPOSE_RESPONSES) -> FilterUses:
    """ext_proc on for `purpose` (core/wire.py): the route's responses, or sealing ids."""
    overrides = {
        "processing_mode": _MODES[purpose],
        # Never open for ids: a raw id handed out, or a sealed one let through, would cross owners.
        "failure_mode_allow": route.policy_service.fail_open and purpose == PURPOSE_RESPONSES,
        "grpc_initial_metadata": [
            {"key": ROUTE_METADATA_KEY, "value": route.name},
            {"key": PURPOSE_METADATA_KEY, "value": purpose},
        ],
    }
    return {EXT_PROC: typed(EXT_PROC_PER_ROUTE, {"overrides": overrides})}
