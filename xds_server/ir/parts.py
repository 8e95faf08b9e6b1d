"""Every protocol's IR parts, in one list: the unions the neutral IR refers to.

A new protocol adds its module (ir/a2a.py: its route part and what its
grants allow) and one entry to each line here; its builder is listed in
ir/build.py.
"""

from __future__ import annotations

from xds_server.ir import mcp

#: The protocol part of a route (RouteIR.protocol).
ProtocolPart = mcp.McpRouteIR
#: What a grant allows, in its protocol's terms (GrantIR.allows).
GrantAllows = mcp.McpAllowsIR

#: Every dataclass that is a member of one of the unions above, by its `KIND` (for ir.load).
PROTOCOL_PARTS: tuple[type, ...] = (mcp.McpRouteIR,)
GRANT_PARTS: tuple[type, ...] = (mcp.McpAllowsIR,)
