"""IR → Envoy resources, one set per gateway (= per Envoy node group).

Pure: translators read only the IR (no files, no environment, no policy
models), so the same IR always gives the same resources, and an IR loaded
from its YAML (ir.load) translates exactly like one built from policies.
Any exception raised here is a bug of the gateway, not a problem of the
policies (those were all reported while the IR was built).

    listener.py       the listener: HCM, filters in slot order, local replies, access log
    filters.py        the filter order and how each Envoy route treats each filter
    route.py          routes (RDS): per route its Envoy routes, RBAC, policy-service uses
    rbac.py           grants → RBAC allow-lists (principals from ir/principals.py)
    local_reply.py    Envoy's own replies → JSON-RPC errors
    cluster.py        upstreams → clusters (CDS) and endpoints (EDS)
    tls.py            downstream TLS and its SDS secrets
    jwt.py            jwt_authn providers, requirements, JWKS clusters
    oauth.py          OAuth protected-resource metadata and the 401 challenge
    policy_service.py ext_authz / ext_proc and their clusters
    protocols/        what depends on the protocol: mcp.py (one module per protocol)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.config.route.v3.scoped_route_pb2 import ScopedRouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from xds_server.ir.types import IR, GatewayIR, SecretIR
from xds_server.translate import virtual_mcp
from xds_server.translate.cluster import build_cluster, build_load_assignment
from xds_server.translate.jwt import jwks_clusters
from xds_server.translate.listener import build_listener, extension_configs
from xds_server.translate.memo import TranslateMemo, memoised
from xds_server.translate.policy_service import policy_clusters
from xds_server.translate.route import build_route_configs
from xds_server.translate.tls import gateway_secrets


@dataclass(frozen=True)
class GatewayResources:
    """Everything one gateway's Envoys receive, each tuple sorted by resource name."""

    clusters: tuple[Cluster, ...]
    endpoints: tuple[ClusterLoadAssignment, ...]
    listeners: tuple[Listener, ...]
    routes: tuple[RouteConfiguration, ...]
    secrets: tuple[Secret, ...] = ()  # SDS: certificates and trust bundles
    scopes: tuple[ScopedRouteConfiguration, ...] = ()  # SRDS: which route configuration serves which path
    extension_configs: tuple[TypedExtensionConfig, ...] = ()  # ECDS: HTTP filters' configs the listener names
    # Secret values some resources carry in clear (API keys, private keys), for `render` to redact.
    redact: frozenset[str] = field(default=frozenset(), repr=False)


def _values_to_redact(gateway: GatewayIR) -> frozenset[str]:
    """Every secret the gateway's IR carries (API keys in header matchers, private keys, any
    future one): whatever shows the resources (render, goldens) must not show these."""
    found: set[str] = set()
    # Found once per part object (the IR build hands back unchanged routes and agents as they were).
    for part in gateway.parts():
        found |= memoised(("secrets", id(part)), part, lambda part=part: _secrets_in(part))  # type: ignore[misc]
    return frozenset(v for v in found if v)


def _secrets_in(value: Any) -> frozenset[str]:
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretIR):
            found.add(value.value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    walk(value)
    return frozenset(found)


def translate_gateway(gateway: GatewayIR) -> GatewayResources:
    clusters = [build_cluster(r) for r in gateway.routes]
    clusters += policy_clusters(gateway)
    clusters += jwks_clusters(gateway)  # where remote JWKS are fetched from
    endpoints = [cla for r in gateway.routes if (cla := build_load_assignment(r)) is not None]
    members, member_endpoints = virtual_mcp.member_clusters(gateway)  # virtual servers' native members
    clusters += members
    endpoints += member_endpoints
    configs, scopes = build_route_configs(gateway)
    return GatewayResources(
        clusters=tuple(sorted(clusters, key=lambda c: c.name)),
        endpoints=tuple(sorted(endpoints, key=lambda e: e.cluster_name)),
        listeners=(build_listener(gateway),),
        routes=tuple(sorted(configs, key=lambda c: c.name)),
        scopes=tuple(sorted(scopes, key=lambda c: c.name)),
        secrets=tuple(sorted(gateway_secrets(gateway), key=lambda s: s.name)),
        extension_configs=extension_configs(gateway),
        redact=_values_to_redact(gateway),
    )


def translate(ir: IR, memo: TranslateMemo | None = None) -> dict[str, GatewayResources]:
    """Resources per gateway name (the Envoy `node.cluster` that receives them). With `memo`, what
    earlier translations built from the same inputs is reused (translate/memo.py): same result."""
    if memo is None:
        return {g.name: translate_gateway(g) for g in ir.gateways}
    with memo.active():
        return {g.name: translate_gateway(g) for g in ir.gateways}
