"""Translated xDS resources → a static Envoy bootstrap, for `envoy --mode validate`.

Validate mode checks a bootstrap without contacting a control plane, so the
dynamic parts are made static: each listener gets its route configuration
inline (`route_config` instead of `rds`), or its scopes with their route
configurations inline (instead of SRDS and RDS), each discovered HTTP filter
gets its extension configuration inline (`typed_config` instead of
`config_discovery`, ECDS), each EDS cluster becomes a
STATIC cluster with its ClusterLoadAssignment inline, and SDS secrets become
static secrets (`static_resources.secrets`, referred to by name without an
`sds_config`). Everything else is the translator's output unchanged, so Envoy
validates exactly what ADS would send.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from xds_server.translate import GatewayResources
from xds_server.translate.proto import to_dict

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _inline_routes(listener: dict[str, Any], routes: dict[str, dict[str, Any]],
                   scopes: list[dict[str, Any]], extensions: dict[str, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            hcm = network_filter.get("typed_config", {})
            if hcm.get("@type") != HCM_TYPE:
                continue
            for http_filter in hcm.get("http_filters", []):
                if "config_discovery" in http_filter:
                    http_filter.pop("config_discovery")
                    http_filter["typed_config"] = extensions[http_filter["name"]]  # KeyError: a translator bug
            if "rds" in hcm:
                name = hcm.pop("rds")["route_config_name"]
                hcm["route_config"] = routes[name]  # KeyError = dangling RDS name, a translator bug
            if "scoped_routes" in hcm:
                scoped = hcm["scoped_routes"]
                scoped.pop("scoped_rds")
                inline = [{k: v for k, v in sc.items() if k != "route_configuration_name"}
                          | {"route_configuration": routes[sc["route_configuration_name"]]} for sc in scopes]  # fmt: skip
                scoped["scoped_route_configurations_list"] = {"scoped_route_configurations": inline}
    return listener


def _static_cluster(cluster: Cluster, assignments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    body = to_dict(cluster)
    if cluster.type == Cluster.EDS:
        body.pop("eds_cluster_config", None)
        body["type"] = "STATIC"
        body["load_assignment"] = assignments[cluster.name]
    return body


def _static_secret_refs(value: Any, secrets: set[str]) -> Any:
    """Drop `sds_config` from every SdsSecretConfig: a bare name refers to a static secret."""
    if isinstance(value, dict):
        if "sds_config" in value and "name" in value:
            assert value["name"] in secrets, f"dangling SDS secret name {value['name']!r}"  # a translator bug
            value = {k: v for k, v in value.items() if k != "sds_config"}
        return {k: _static_secret_refs(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_static_secret_refs(v, secrets) for v in value]
    return value


def static_bootstrap(resources: GatewayResources) -> dict[str, Any]:
    """One gateway's resources as a bootstrap dict (write it as JSON)."""
    routes = {r.name: to_dict(r) for r in resources.routes}
    assignments = {e.cluster_name: to_dict(e) for e in resources.endpoints}
    secrets = {s.name for s in resources.secrets}
    extensions = {e.name: to_dict(e)["typed_config"] for e in resources.extension_configs}
    static: dict[str, Any] = {
        "listeners": [
            _inline_routes(to_dict(listener), routes, [to_dict(sc) for sc in resources.scopes], extensions)
            for listener in resources.listeners
        ],  # fmt: skip
        "clusters": [_static_cluster(c, assignments) for c in resources.clusters],
    }
    if resources.secrets:
        static["secrets"] = [to_dict(s) for s in resources.secrets]  # the real keys: Envoy checks they load
    from xds_server.runtime.bootstrap import RUNTIME

    return {"static_resources": _static_secret_refs(static, secrets), "layered_runtime": RUNTIME}
