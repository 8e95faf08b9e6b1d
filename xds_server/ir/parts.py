"""Every protocol's IR parts, in one list: the unions the neutral IR refers to (and ir.load
reads, telling the members apart by their `KIND`).

A new protocol adds its module (ir/a2a.py: its route part and what its
grants allow) and one entry to each line here; its builder is listed in
ir/build.py.
"""

from __future__ import annotations

from xds_server.ir import a2a, mcp

#: The protocol part of a route (RouteIR.protocol).
ProtocolPart = mcp.McpRouteIR | a2a.A2aRouteIR
#: What a grant allows, in its protocol's terms (GrantIR.allows).
GrantAllows = mcp.McpAllowsIR | a2a.A2aAllowsIR
