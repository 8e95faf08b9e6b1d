"""IR → Envoy resources, one set per gateway (= per Envoy node group)."""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from xds_server.core.secrets import read_secret
from xds_server.ir.types import IR, ApiKeyPrincipal, GatewayIR
from xds_server.translate.cluster import build_cluster, build_load_assignment
from xds_server.translate.jwt import jwks_clusters
from xds_server.translate.listener import build_listener
from xds_server.translate.policy_service import gateway_needs_policy_service, policy_cluster, policy_http_cluster
from xds_server.translate.route import build_route_config
from xds_server.translate.tls import gateway_secrets


@dataclass(frozen=True)
class GatewayResources:
    """Everything one gateway's Envoys receive, each tuple sorted by resource name."""

    clusters: tuple[Cluster, ...]
    endpoints: tuple[ClusterLoadAssignment, ...]
    listeners: tuple[Listener, ...]
    routes: tuple[RouteConfiguration, ...]
    secrets: tuple[Secret, ...] = ()  # SDS: certificates and trust bundles, read from files at build time
    # Secret values some resources carry in clear (API keys in header matchers), for `render` to redact.
    redact: frozenset[str] = field(default=frozenset(), repr=False)


def _values_to_redact(gateway: GatewayIR) -> frozenset[str]:
    """The API keys the gateway's RBAC and local-reply matchers compare headers with."""
    return frozenset(
        read_secret(p.key_env, p.key_file, what=f"API key ({p.key_env or p.key_file})")
        for agent in gateway.agents
        for p in agent.principals
        if isinstance(p, ApiKeyPrincipal)
    )


def translate_gateway(gateway: GatewayIR) -> GatewayResources:
    clusters = [build_cluster(b) for b in gateway.backends]
    if gateway_needs_policy_service(gateway) and gateway.policy_service is not None:
        clusters.append(policy_cluster(gateway.policy_service))
        if gateway.ext_authz_http is not None:
            clusters.append(policy_http_cluster(gateway.ext_authz_http))
    clusters += jwks_clusters(gateway)  # where remote JWKS are fetched from
    endpoints = [cla for b in gateway.backends if (cla := build_load_assignment(b)) is not None]
    return GatewayResources(
        clusters=tuple(sorted(clusters, key=lambda c: c.name)),
        endpoints=tuple(sorted(endpoints, key=lambda e: e.cluster_name)),
        listeners=(build_listener(gateway),),
        routes=(build_route_config(gateway),),
        secrets=tuple(sorted(gateway_secrets(gateway), key=lambda s: s.name)),
        redact=_values_to_redact(gateway),
    )


def translate(ir: IR) -> dict[str, GatewayResources]:
    """Resources per gateway name (the Envoy `node.cluster` that receives them)."""
    return {g.name: translate_gateway(g) for g in ir.gateways}
