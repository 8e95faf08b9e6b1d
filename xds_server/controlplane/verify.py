"""Check a gateway's resources before they are published.

Envoy resolves names across resources (listener → route configuration, or
listener → scopes → route configurations; route → cluster, EDS cluster →
load assignment, TLS context → SDS secret, HTTP filter → extension
configuration).
A dangling name would make Envoy warm forever or NACK, so a set with one is
never published; the last good snapshot keeps serving and the problem is
reported like a policy error.
"""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import DownstreamTlsContext, UpstreamTlsContext

from xds_server.translate import GatewayResources
from xds_server.translate.tls import referenced_secret_names


def _duplicates(names: list[str]) -> set[str]:
    seen: set[str] = set()
    return {n for n in names if n in seen or seen.add(n)}  # type: ignore[func-returns-value]


def check_consistent(gateway: str, resources: GatewayResources) -> list[str]:
    """Every problem found, as messages naming the gateway and the resource; [] when consistent."""
    problems: list[str] = []
    cluster_names = [c.name for c in resources.clusters]
    route_names = [r.name for r in resources.routes]
    for kind, names in (
        ("cluster", cluster_names),
        ("route configuration", route_names),
        ("listener", [lst.name for lst in resources.listeners]),
        ("scope", [sc.name for sc in resources.scopes]),
        ("scope key", [sc.key.SerializeToString(deterministic=True).hex() for sc in resources.scopes]),
        ("load assignment", [e.cluster_name for e in resources.endpoints]),
        ("secret", [s.name for s in resources.secrets]),
        ("extension configuration", [e.name for e in resources.extension_configs]),
    ):
        problems += [f"gateway {gateway}: duplicate {kind} '{n}'" for n in sorted(_duplicates(names))]

    eds_clusters = {c.name for c in resources.clusters if c.type == Cluster.EDS}
    assigned = {e.cluster_name for e in resources.endpoints}
    problems += [
        f"gateway {gateway}: EDS cluster '{n}' has no load assignment" for n in sorted(eds_clusters - assigned)
    ]
    problems += [
        f"gateway {gateway}: load assignment '{n}' names no EDS cluster" for n in sorted(assigned - eds_clusters)
    ]

    for route_config in resources.routes:
        for vhost in route_config.virtual_hosts:
            for route in vhost.routes:
                if route.HasField("route") and route.route.cluster not in cluster_names:
                    problems.append(
                        f"gateway {gateway}: route '{route.name}' points at unknown cluster '{route.route.cluster}'"
                    )

    configs = {e.name: e for e in resources.extension_configs}
    extension_names = set(configs)
    for listener in resources.listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                hcm = HttpConnectionManager()
                if not network_filter.typed_config.Unpack(hcm):
                    continue
                if hcm.HasField("rds") and hcm.rds.route_config_name not in route_names:
                    problems.append(
                        f"gateway {gateway}: listener '{listener.name}' asks for unknown route configuration "
                        f"'{hcm.rds.route_config_name}'"
                    )
                if hcm.HasField("scoped_routes") and not resources.scopes:
                    problems.append(f"gateway {gateway}: listener '{listener.name}' has scoped routes but no scope")
                discovered = [f for f in hcm.http_filters if f.HasField("config_discovery")]
                problems += [f"gateway {gateway}: listener '{listener.name}' asks for unknown extension configuration "
                             f"'{f.name}'" for f in discovered if f.name not in extension_names]  # fmt: skip
                problems += [f"gateway {gateway}: extension configuration '{f.name}' is a "
                             f"{configs[f.name].typed_config.type_url}, not one of {list(f.config_discovery.type_urls)}"
                             for f in discovered if f.name in configs
                             and configs[f.name].typed_config.type_url not in f.config_discovery.type_urls]  # fmt: skip
    for sc in resources.scopes:
        if sc.route_configuration_name not in route_names:
            problems.append(
                f"gateway {gateway}: scope '{sc.name}' names unknown route configuration '{sc.route_configuration_name}'"
            )

    secret_names = {s.name for s in resources.secrets}
    sockets = [
        (f"listener '{lst.name}'", chain.transport_socket)
        for lst in resources.listeners
        for chain in lst.filter_chains
        if chain.HasField("transport_socket")
    ]
    sockets += [
        (f"cluster '{c.name}'", c.transport_socket) for c in resources.clusters if c.HasField("transport_socket")
    ]
    for where, socket in sockets:
        for name in _secret_refs(socket):
            if name not in secret_names:
                problems.append(f"gateway {gateway}: {where} names unknown secret '{name}'")
    return problems


def _secret_refs(socket: TransportSocket) -> list[str]:
    """SDS secret names a TLS transport socket refers to ([] for any other socket)."""
    for context in (DownstreamTlsContext(), UpstreamTlsContext()):
        if socket.typed_config.Unpack(context):
            return referenced_secret_names(context)
    return []
