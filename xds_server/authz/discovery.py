"""Discovery: which MCP servers and A2A agents a caller may use on a gateway, asked through Envoy.

Envoy routes `GET /.well-known/agentxds/discovery` to the policy service's
HTTP port as `GET /discover/<gateway>` with what it verified (JWT payloads,
the client certificate's URI SAN) in headers only Envoy sets, as for HTTP
ext_authz (translate/discovery.py), and the caller's identity headers. The
answer lists, for the agent the request proves, every route of the gateway
where it has a grant (for the user it acts for): its name, kind, URL on the
gateway (and an A2A agent's card URL), and whether it was registered at run
time. A caller the gateway does not know gets 403 and nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from xds_server.authz.state import PolicyIndex
from xds_server.core.wire import REGISTERED_ANNOTATION
from xds_server.ir.principals import JwtPayloads

_CARD = "/.well-known/agent-card.json"


def listing(index: PolicyIndex, gateway: str, headers: Mapping[str, str], jwt: JwtPayloads,
            peer: str | None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """(HTTP status, JSON answer) of one discovery request on `gateway`."""
    views = [v for v in index.routes.values() if v.gateway.name == gateway]
    if not views:
        return 404, {"error": f"no gateway {gateway!r} in the policy service's current policies"}
    # Only the gateway's own providers' payloads are Envoy's: the route strips a client's copies of
    # those headers alone (translate/discovery.py), so any other provider's could be forged.
    providers = {p.name for p in views[0].gateway.identity.jwt_providers}
    jwt = {provider: payload for provider, payload in jwt.items() if provider in providers}
    agent = views[0].agent_of(headers, jwt, peer)  # the one it speaks for, as Envoy names it
    agents = (agent,) if agent is not None else ()
    if not agents:
        return 403, {"error": "unknown agent: the request carries no identity of an agent known to this gateway"}
    base = f"{headers.get('x-forwarded-proto', 'http')}://{headers.get('host', '')}"
    entries = []
    for view in sorted(views, key=lambda v: v.name):
        if not any(view.grants_for(agent, jwt) for agent in agents):
            continue
        route = view.route
        entry: dict[str, Any] = {"name": route.name, "kind": route.kind, "url": base + route.path,
                                 "registered": route.annotation(REGISTERED_ANNOTATION) == "true"}  # fmt: skip
        if route.kind == "a2a":
            entry["card"] = base + route.path.rstrip("/") + _CARD
        entries.append(entry)
    return 200, {"gateway": gateway, "agent": agents[0], "mcpServers": [e for e in entries if e["kind"] == "mcp"],
                 "a2aAgents": [e for e in entries if e["kind"] == "a2a"]}  # fmt: skip


def response(status: int, answer: Mapping[str, Any]) -> bytes:
    """The HTTP/1.1 response carrying `answer`."""
    body = json.dumps(answer, separators=(",", ":")).encode()
    head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\ncontent-type: application/json\r\n"
    return (head + f"cache-control: no-store\r\ncontent-length: {len(body)}\r\n\r\n").encode("latin-1") + body
