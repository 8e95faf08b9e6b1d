"""The discovery route: `GET /.well-known/agentxds/discovery` answered by the policy service.

Served on a gateway whose routes use the policy service over HTTP (its
`extAuthz: http`, the default; every gateway with an A2A agent uses the
policy service). Envoy sends the request to the policy service's HTTP port
as `GET /discover/<gateway>` (authz/discovery.py) with what it verified in
the same headers as HTTP ext_authz checks: any client copy of those is
removed first, then Envoy's own added (an empty value, nothing verified,
adds none). Protocol filters, RBAC and the policy filters are off there;
tokens are checked if sent (a bad one is refused), none is required; the
identity checks of the listener (one identity, unambiguous) still apply.
"""

from __future__ import annotations

from envoy.config.route.v3.route_pb2 import RouteConfiguration

from xds_server.core.wire import DISCOVER_PREFIX, DISCOVERY_PATH, VERIFIED_PEER_HEADER
from xds_server.ir.types import GatewayIR
from xds_server.translate import jwt, rbac
from xds_server.translate.filters import HttpFilter, RouteFilters, Slot, Use
from xds_server.translate.policy_service import POLICY_HTTP_CLUSTER, secret_route_headers, verified_identity_headers
from xds_server.translate.proto import to_message

ROUTE_NAME = "agentxds/discovery"


def served(gateway: GatewayIR) -> bool:
    return gateway.needs_policy_service and gateway.policy_service is not None and gateway.ext_authz_http is not None


def route_config(gateway: GatewayIR, filters: list[HttpFilter]) -> RouteConfiguration | None:
    """The discovery route's configuration, or None where it is not served."""
    if not served(gateway):
        return None
    verified = verified_identity_headers(gateway)
    uses = {Slot.DEFRAME: Use.OFF, Slot.SESSION: Use.OFF, rbac.RBAC_FILTER: Use.OFF, **jwt.optional(gateway)}
    route = {
        "name": ROUTE_NAME,
        "match": {"path": DISCOVERY_PATH, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
        "route": {"cluster": POLICY_HTTP_CLUSTER, "prefix_rewrite": f"{DISCOVER_PREFIX}{gateway.name}",
                  "timeout": "2s"},
        # A client's copies never reach the service (the peer header always: a gateway without client
        # certificates adds none, and the service must not read one).
        "request_headers_to_remove": sorted({h["key"] for h in verified} | {VERIFIED_PEER_HEADER}),
        # What Envoy verified, and the secret that shows the service the request is Envoy's.
        "request_headers_to_add": [*({"header": h, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for h in verified),
                                   *secret_route_headers(gateway).get("request_headers_to_add", [])],
        "typed_per_filter_config": RouteFilters(None, uses).config(filters),
    }  # fmt: skip
    return to_message(RouteConfiguration, {
        "name": f"{ROUTE_NAME}/{gateway.name}",
        "virtual_hosts": [{"name": gateway.name, "domains": ["*"], "routes": [route]}],
    })  # fmt: skip
