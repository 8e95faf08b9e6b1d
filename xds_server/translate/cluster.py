"""Route upstreams → Envoy clusters (CDS) and their endpoints (EDS).

An upstream whose endpoints are all IP addresses becomes an EDS cluster, so an
endpoint change is a small EDS push that leaves the cluster (and its
connections) alone. EDS cannot carry DNS names, so an upstream with any host
name becomes a STRICT_DNS cluster with its endpoints inline.

An upstream with `tls` gets an `UpstreamTlsContext` transport socket (see
`upstream_transport_socket`): the CA bundle and the client certificate were
read when the IR was built and are sent inline, so a rotated file takes
effect on the next build.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from xds_server.core.wire import typed
from xds_server.ir.types import EndpointIR, HealthCheckIR, RouteIR, UpstreamIR, UpstreamTlsIR
from xds_server.translate.names import cluster_name
from xds_server.translate.proto import to_message


def is_ip(host: str) -> bool:
    """Whether `host` is an IP address (a STATIC endpoint) rather than a DNS name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def uses_eds(upstream: UpstreamIR) -> bool:
    """True when every endpoint is an IP address (EDS can serve it)."""
    return all(is_ip(e.host) for e in upstream.endpoints)


def load_assignment(name: str, endpoints: tuple[EndpointIR, ...]) -> dict[str, Any]:
    """A ClusterLoadAssignment body: every endpoint in one locality."""
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


# Where the Envoy host keeps its system CA bundle (Debian/Ubuntu, the official
# Envoy image). Envoy has no built-in trust store: `tls` without `caFile`
# verifies against this file, read by Envoy itself.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
UPSTREAM_TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def san_matcher(name: str) -> dict[str, Any]:
    """Match a peer certificate's SAN: an IP SAN for an address, a DNS SAN for a name."""
    kind = "IP_ADDRESS" if is_ip(name) else "DNS"
    return {"san_type": kind, "matcher": {"exact": name}}


def upstream_transport_socket(route: RouteIR) -> dict[str, Any] | None:
    """The TLS transport socket of `route`'s upstream (see `transport_socket`)."""
    return transport_socket(route.upstream)


def transport_socket(upstream: UpstreamIR) -> dict[str, Any] | None:
    """The cluster's TLS transport socket, or None for plain HTTP (`tls_transport_socket`)."""
    return tls_transport_socket(upstream.tls, upstream.endpoints) if upstream.tls is not None else None


def tls_transport_socket(
    tls: UpstreamTlsIR, endpoints: Sequence[EndpointIR], alpn: Sequence[str] = ()
) -> dict[str, Any]:
    """A TLS transport socket to `endpoints`, offering `alpn` (none: Envoy's default).

    Server name: `sni` when given; otherwise the endpoints' DNS name (one
    distinct name: sent as SNI; several: each connection sends its host's
    name, `auto_host_sni`); IP endpoints send no SNI. The certificate must
    carry that name (DNS SAN), or the endpoint's IP (IP SAN) when there is
    no name.
    """
    validation: dict[str, Any] = (
        {"trusted_ca": {"inline_string": tls.ca_pem}}
        if tls.ca_pem is not None
        else {"trusted_ca": {"filename": SYSTEM_CA_BUNDLE}}
    )
    context: dict[str, Any] = {}
    dns_names = sorted({e.host for e in endpoints if not is_ip(e.host)})
    if tls.sni is not None:
        names = [tls.sni]
        if not is_ip(tls.sni):  # SNI carries host names only (RFC 6066)
            context["sni"] = tls.sni
    else:
        names = sorted({e.host for e in endpoints})
        if len(dns_names) == 1:
            context["sni"] = dns_names[0]
        elif len(dns_names) > 1:
            context["auto_host_sni"] = True
            context["auto_sni_san_validation"] = True
    validation["match_typed_subject_alt_names"] = [san_matcher(n) for n in names]
    # Envoy offers TLS 1.2 at most as a client unless told: the policy service's HTTP port speaks 1.3 only.
    common: dict[str, Any] = {
        "validation_context": validation,
        "tls_params": {"tls_maximum_protocol_version": "TLSv1_3"},
    }
    if alpn:
        common["alpn_protocols"] = list(alpn)
    if tls.certificate_pem is not None and tls.private_key is not None:
        common["tls_certificates"] = [{
            "certificate_chain": {"inline_string": tls.certificate_pem},
            "private_key": {"inline_string": tls.private_key.value},
        }]  # fmt: skip
    context["common_tls_context"] = common
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed(UPSTREAM_TLS_TYPE, context)}


def _duration(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def build_cluster(route: RouteIR) -> Cluster:
    """The cluster for `route`'s upstream (`upstream_cluster`)."""
    return upstream_cluster(cluster_name(route), route.upstream)


def upstream_cluster(name: str, upstream: UpstreamIR) -> Cluster:
    """The cluster `name` for `upstream`: HTTP/1.1 (over TLS with `tls`), round robin or least request,
    EDS or STRICT_DNS, with active health checks when the policy asks for them."""
    body: dict[str, Any] = {
        "name": name,
        "connect_timeout": _duration(upstream.connect_timeout_ms),
        "lb_policy": upstream.lb_policy,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                {"explicit_http_config": {"http_protocol_options": {}}},
            )
        },
    }
    if uses_eds(upstream):
        body["type"] = "EDS"
        body["eds_cluster_config"] = {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
    else:
        body["type"] = "STRICT_DNS"
        body["dns_lookup_family"] = "V4_PREFERRED"
        body["load_assignment"] = load_assignment(name, upstream.endpoints)
    if (socket := transport_socket(upstream)) is not None:
        body["transport_socket"] = socket
    if upstream.health_check is not None:
        body["health_checks"] = [_health_check(upstream.health_check)]
    return to_message(Cluster, body)


def _health_check(check: HealthCheckIR) -> dict[str, Any]:
    """Envoy's active health check: an HTTP GET (HTTP/1.1, 2xx) or a TCP connect, per endpoint."""
    body: dict[str, Any] = {
        "timeout": _duration(check.timeout_ms),
        "interval": _duration(check.interval_ms),
        # Envoy probes a cluster that has carried no traffic yet only every 60 s by default: a
        # replica dying before the first request would go unnoticed for a minute (seen on 1.40).
        "no_traffic_interval": _duration(check.interval_ms),
        "unhealthy_threshold": check.unhealthy_threshold,
        "healthy_threshold": check.healthy_threshold,
    }
    if check.path is not None:
        body["http_health_check"] = {"path": check.path}
    else:
        body["tcp_health_check"] = {}
    return body


def build_load_assignment(route: RouteIR) -> ClusterLoadAssignment | None:
    """The EDS resource for `route`'s upstream, or None when its cluster carries endpoints inline."""
    return upstream_load_assignment(cluster_name(route), route.upstream)


def upstream_load_assignment(name: str, upstream: UpstreamIR) -> ClusterLoadAssignment | None:
    """The EDS resource of cluster `name`, or None when its cluster carries endpoints inline."""
    if not uses_eds(upstream):
        return None
    return to_message(ClusterLoadAssignment, load_assignment(name, upstream.endpoints))
