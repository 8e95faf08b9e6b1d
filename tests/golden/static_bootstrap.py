"""Translated xDS resources → a static Envoy bootstrap, for `envoy --mode validate`.

Validate mode checks a bootstrap without contacting a control plane, so the
dynamic parts are made static: each listener gets its route configuration
inline (`route_config` instead of `rds`) and each EDS cluster becomes a
STATIC cluster with its ClusterLoadAssignment inline. Everything else is the
translator's output unchanged, so Envoy validates exactly what ADS would send.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from xds_server.translate import GatewayResources
from xds_server.translate.proto import to_dict

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _inline_routes(listener: dict[str, Any], routes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            hcm = network_filter.get("typed_config", {})
            if hcm.get("@type") != HCM_TYPE or "rds" not in hcm:
                continue
            name = hcm.pop("rds")["route_config_name"]
            hcm["route_config"] = routes[name]  # KeyError = dangling RDS name, a translator bug
    return listener


def _static_cluster(cluster: Cluster, assignments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    body = to_dict(cluster)
    if cluster.type == Cluster.EDS:
        body.pop("eds_cluster_config", None)
        body["type"] = "STATIC"
        body["load_assignment"] = assignments[cluster.name]
    return body


def static_bootstrap(resources: GatewayResources) -> dict[str, Any]:
    """One gateway's resources as a bootstrap dict (write it as JSON)."""
    routes = {r.name: to_dict(r) for r in resources.routes}
    assignments = {e.cluster_name: to_dict(e) for e in resources.endpoints}
    return {
        "static_resources": {
            "listeners": [_inline_routes(to_dict(listener), routes) for listener in resources.listeners],
            "clusters": [_static_cluster(c, assignments) for c in resources.clusters],
        }
    }
