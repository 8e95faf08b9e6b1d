"""MCP backends → Envoy clusters (CDS) and their endpoints (EDS).

A backend whose endpoints are all IP addresses becomes an EDS cluster, so an
endpoint change is a small EDS push that leaves the cluster (and its
connections) alone. EDS cannot carry DNS names, so a backend with any host
name becomes a STRICT_DNS cluster with its endpoints inline.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from xds_server.ir.types import BackendIR, EndpointIR
from xds_server.translate.names import cluster_name
from xds_server.translate.proto import to_message, typed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def uses_eds(backend: BackendIR) -> bool:
    """True when every endpoint is an IP address (EDS can serve it)."""
    return all(_is_ip(e.host) for e in backend.endpoints)


def _load_assignment(name: str, endpoints: tuple[EndpointIR, ...]) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}}
                    for e in endpoints
                ]
            }
        ],
    }


def _duration(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def build_cluster(backend: BackendIR) -> Cluster:
    """The cluster for `backend`: HTTP/1.1 upstream, round robin, EDS or STRICT_DNS."""
    name = cluster_name(backend.name)
    body: dict[str, Any] = {
        "name": name,
        "connect_timeout": _duration(backend.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                {"explicit_http_config": {"http_protocol_options": {}}},
            )
        },
    }
    if uses_eds(backend):
        body["type"] = "EDS"
        body["eds_cluster_config"] = {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
    else:
        body["type"] = "STRICT_DNS"
        body["dns_lookup_family"] = "V4_PREFERRED"
        body["load_assignment"] = _load_assignment(name, backend.endpoints)
    return to_message(Cluster, body)


def build_load_assignment(backend: BackendIR) -> ClusterLoadAssignment | None:
    """The EDS resource for `backend`, or None when its cluster carries endpoints inline."""
    if not uses_eds(backend):
        return None
    return to_message(ClusterLoadAssignment, _load_assignment(cluster_name(backend.name), backend.endpoints))
