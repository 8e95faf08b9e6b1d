"""A gateway's backends → one RouteConfiguration (RDS).

Per backend, matched on its exact gateway path and all carrying the
backend's RBAC allow-list: first the route whose tool calls need a policy
decision (ext_authz on), then the route for list methods (ext_proc on), then
the native route for everything else (see `policy_service`). Every route of a
backend is named after it, so replies name the backend whichever matched.
A last catch-all route answers 404 (mapped to a JSON-RPC "no backend" error)
with RBAC switched off, so a wrong path is reported as a wrong path rather
than as a denial.

Each backend route names its JWT requirement (optional tokens, or the
backend's user token when it has `auth`, see `jwt`). A backend with `auth`
also gets routes serving its OAuth protected-resource metadata (see
`oauth`): plain GETs that need no token, so the MCP filter, jwt_authn, RBAC
and the policy filters are off there.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3.route_pb2 import RouteConfiguration

from xds_server.ir.types import BackendIR, GatewayIR
from xds_server.translate import jwt, oauth, policy_service, rbac
from xds_server.translate.names import MCP_METADATA_NAMESPACE, cluster_name, route_config_name, route_name
from xds_server.translate.proto import to_message, typed

NO_BACKEND_ROUTE = "no-backend"
FILTER_CONFIG_TYPE = "envoy.config.route.v3.FilterConfig"


def _backend_routes(backend: BackendIR, gateway: GatewayIR) -> list[dict[str, Any]]:
    """The backend's routes, most specific first."""
    python = policy_service.gateway_needs_policy_service(gateway)
    native = _backend_route(backend, gateway, {"path": backend.route_path},
                            policy_service.no_policy_filters() if python else None)  # fmt: skip
    authz = policy_service.authz_route_match(backend)
    lists = policy_service.list_route_match(backend)
    if backend.credentials is not None:
        # Every request needs the policy service (for the backend's credential);
        # list answers are also filtered, so their route turns both filters on.
        routes = []
        if lists is not None:
            routes.append(
                _backend_route(backend, gateway, lists, policy_service.enable_ext_authz_and_ext_proc(backend, gateway))
            )
        assert authz is not None
        return routes + [_backend_route(backend, gateway, authz, policy_service.enable_ext_authz(backend, gateway))]
    routes = []
    if authz is not None:
        routes.append(_backend_route(backend, gateway, authz, policy_service.enable_ext_authz(backend, gateway)))
    if lists is not None:
        routes.append(_backend_route(backend, gateway, lists, policy_service.enable_ext_proc(backend)))
    return routes + [native]


def _backend_route(
    backend: BackendIR, gateway: GatewayIR, match: dict[str, Any], filters: dict[str, Any] | None = None
) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": cluster_name(backend.name),
        "timeout": f"{backend.request_timeout_ms / 1000:.3f}s",
        # Set explicitly: Envoy's own default (5 min) would otherwise apply unseen.
        "idle_timeout": f"{backend.idle_timeout_ms / 1000:.3f}s",
    }
    if backend.upstream_path != backend.route_path:
        action["prefix_rewrite"] = backend.upstream_path
    return {
        "name": route_name(backend.name),
        "match": match,
        "route": action,
        # An agent's API key proves who it is to the gateway; the backend never sees it.
        "request_headers_to_remove": [gateway.identity.api_key_header],
        "typed_per_filter_config": {
            rbac.RBAC_FILTER: rbac.backend_rbac(backend, gateway.agents),
            **jwt.route_requirement(gateway, backend),
            **(filters or {}),
        },
    }


def _metadata_routes(gateway: GatewayIR) -> list[dict[str, Any]]:
    """The protected-resource metadata documents of the backends with `auth` (bodies: local replies)."""
    filters = {
        # Not MCP traffic: a plain GET the MCP filter would refuse (REJECT_NO_MCP).
        MCP_METADATA_NAMESPACE: typed(FILTER_CONFIG_TYPE, {"disabled": True}),
        rbac.RBAC_FILTER: typed(rbac.RBAC_PER_ROUTE_TYPE),
        **jwt.route_disabled(gateway),
        **(policy_service.no_policy_filters() if policy_service.gateway_needs_policy_service(gateway) else {}),
    }
    return [
        {
            "name": oauth.metadata_route_name(backend),
            "match": {"path": path},
            "direct_response": {"status": 200},
            "typed_per_filter_config": filters,
        }
        for backend in oauth.auth_backends(gateway)
        for path in oauth.document_paths(gateway, backend)
    ]


def _no_backend_route(gateway: GatewayIR) -> dict[str, Any]:
    filters = policy_service.no_policy_filters() if policy_service.gateway_needs_policy_service(gateway) else {}
    return {
        "name": NO_BACKEND_ROUTE,
        "match": {"prefix": "/"},
        "direct_response": {"status": 404},
        # An RBACPerRoute without rules disables RBAC on this route only.
        "typed_per_filter_config": {
            rbac.RBAC_FILTER: typed(rbac.RBAC_PER_ROUTE_TYPE),
            **jwt.route_disabled(gateway),
            **filters,
        },
    }


def build_route_config(gateway: GatewayIR) -> RouteConfiguration:
    routes = [
        *_metadata_routes(gateway),
        *(r for b in gateway.backends for r in _backend_routes(b, gateway)),
        _no_backend_route(gateway),
    ]
    body = {
        "name": route_config_name(gateway.name),
        "virtual_hosts": [{"name": gateway.name, "domains": ["*"], "routes": routes}],
    }
    return to_message(RouteConfiguration, body)
