"""A gateway's backends → one RouteConfiguration (RDS).

One route per backend, matched on its exact gateway path, carrying that
backend's RBAC allow-list. A last catch-all route answers 404 (mapped to a
JSON-RPC "no backend" error) with RBAC switched off, so a wrong path is
reported as a wrong path rather than as a denial.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3.route_pb2 import RouteConfiguration

from xds_server.ir.types import BackendIR, GatewayIR
from xds_server.translate import rbac
from xds_server.translate.names import cluster_name, route_config_name, route_name
from xds_server.translate.proto import to_message, typed

NO_BACKEND_ROUTE = "no-backend"


def _backend_route(backend: BackendIR, gateway: GatewayIR) -> dict[str, Any]:
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
        "match": {"path": backend.route_path},
        "route": action,
        "typed_per_filter_config": {rbac.RBAC_FILTER: rbac.backend_rbac(backend, gateway.agents)},
    }


def _no_backend_route() -> dict[str, Any]:
    return {
        "name": NO_BACKEND_ROUTE,
        "match": {"prefix": "/"},
        "direct_response": {"status": 404},
        # An RBACPerRoute without rules disables RBAC on this route only.
        "typed_per_filter_config": {rbac.RBAC_FILTER: typed(rbac.RBAC_PER_ROUTE_TYPE)},
    }


def build_route_config(gateway: GatewayIR) -> RouteConfiguration:
    routes = [_backend_route(b, gateway) for b in gateway.backends] + [_no_backend_route()]
    body = {
        "name": route_config_name(gateway.name),
        "virtual_hosts": [{"name": gateway.name, "domains": ["*"], "routes": routes}],
    }
    return to_message(RouteConfiguration, body)
