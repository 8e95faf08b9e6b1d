"""Every protocol's IR parts, in one list: the unions the neutral IR refers to, and which
builder makes each protocol's routes.

A new protocol adds its module (ir/a2a.py: its route part, what its grants
allow, and `build_routes`) and one entry to each line here.
"""

from __future__ import annotations

from collections.abc import Callable

from xds_server.ir import mcp
from xds_server.ir.routes import RouteBuild
from xds_server.ir.types import RouteIR
from xds_server.policy.load import PolicySet

#: The protocol part of a route (RouteIR.protocol).
ProtocolPart = mcp.McpRouteIR
#: What a grant allows, in its protocol's terms (GrantIR.allows).
GrantAllows = mcp.McpAllowsIR

#: Every dataclass that is a member of one of the unions above, by its `KIND` (for ir.load).
PROTOCOL_PARTS: tuple[type, ...] = (mcp.McpRouteIR,)
GRANT_PARTS: tuple[type, ...] = (mcp.McpAllowsIR,)

#: How each protocol's routes are built from a policy set, for one gateway.
ROUTE_BUILDERS: tuple[Callable[[PolicySet, RouteBuild], list[RouteIR]], ...] = (mcp.build_routes,)
