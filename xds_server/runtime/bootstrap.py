"""The Envoy ADS bootstrap: everything but the `xds` cluster comes from the control plane.

Shape (verified with `envoy --mode validate` on 1.40, see
/work/shared/envoy-1.40-samples/09-ads-bootstrap.yaml): SotW gRPC ADS over
API v3, CDS and LDS from ADS, the node sent only on the first message, and a
static `xds` cluster speaking HTTP/2 to the control plane.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from xds_server.runtime.overload import OverloadLimits, overload_manager

# The node metadata key the control plane reads (xds/node_overrides.py; runtime imports nothing of
# the server, and tests/unit/test_node_overrides.py checks the two agree).
LISTEN_PORT_KEY = "agentxds.dev/listen_port"

XDS_CLUSTER = "xds"

# Envoy re-opens a closed or refused ADS stream after a jittered exponential
# backoff (a random delay below min(base * 2^n, max)). The default (base
# 500 ms, max 30 s) left an Envoy started 10 s before its control plane idle
# for 4.6 s more (measured on 1.40). `envoy_grpc.retry_policy.retry_back_off`
# is what xDS streams read (ApiConfigSource has no backoff field of its own);
# with 0.1 s / 0.5 s the stream came up 20-150 ms after the control plane did.
# The cost is a couple of refused connects a second while it is down.
ADS_RETRY_BASE_INTERVAL = "0.1s"
ADS_RETRY_MAX_INTERVAL = "0.5s"

# Connection refused fails at once anyway; this only bounds a black-holed address.
XDS_CONNECT_TIMEOUT = "1s"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# Envoy refuses regexes whose RE2 program is larger than 100 by default; an
# argument pattern as plain as [A-Za-z0-9 ]{1,80} is ~320. Policies are
# reviewed configuration, not user input, so allow larger ones.
RUNTIME = {"layers": [{"name": "agentxds", "static_layer": {
    "re2.max_program_size.error_level": 4096, "re2.max_program_size.warn_level": 1024}}]}  # fmt: skip


def render_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    xds_host: str,
    xds_port: int,
    admin_host: str = "127.0.0.1",
    admin_port: int,
    overload: OverloadLimits | None = None,
    listen_port: int | None = None,
    more_xds: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """Return an ADS bootstrap as plain data (dump it as YAML or JSON).

    `node_cluster` is the node group the control plane serves a snapshot to.
    `xds_host` may be an IP literal (STATIC cluster) or a DNS name such as a
    docker-compose service (STRICT_DNS cluster). `admin_port` 0 lets the
    kernel pick; read the bound address back with `--admin-address-path`
    (EnvoyProcess does). The admin API is bound to `admin_host` only: it can
    stop the server and dump secrets, so never expose it beyond localhost
    without reason. `overload` sets the process's heap and connection limits
    (overload.py); None leaves Envoy unbounded (tests that need no limits).
    `listen_port` moves this Envoy's listeners to that port (a replica on a
    machine running several: xds/node_overrides.py); None keeps the Gateway's.
    `more_xds` lists other control planes serving the same policies: they
    give identical versions, so when the ADS stream breaks Envoy reconnects
    to whichever answers, and nothing it holds changes.
    """
    control_planes = [(xds_host, int(xds_port)), *((h, int(p)) for h, p in more_xds)]
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if all(_is_ip_literal(h) for h, _ in control_planes) else "STRICT_DNS",
        "connect_timeout": XDS_CONNECT_TIMEOUT,
        # gRPC needs HTTP/2 to the control plane.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                        for h, p in control_planes
                    ]
                }
            ],
        },
    }
    bootstrap: dict[str, Any] = {
        "node": {
            "id": node_id,
            "cluster": node_cluster,
            **({"metadata": {LISTEN_PORT_KEY: int(listen_port)}} if listen_port is not None else {}),
        },  # fmt: skip
        "admin": {
            "address": {"socket_address": {"address": admin_host, "port_value": int(admin_port)}},
            # An operator must reach the admin API even when clients hold every connection.
            "ignore_global_conn_limit": True,
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",  # state of the world; DELTA_GRPC would be incremental
                "transport_api_version": "V3",
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": ADS_RETRY_BASE_INTERVAL,
                                    "max_interval": ADS_RETRY_MAX_INTERVAL,
                                }
                            },
                        }
                    }
                ],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [xds_cluster]},
        "layered_runtime": RUNTIME,
    }
    if overload is not None:
        bootstrap["overload_manager"] = overload_manager(overload)
    return bootstrap
