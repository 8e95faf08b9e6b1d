"""Virtual servers on the policy service's HTTP port: `<VMCP_PREFIX><gateway>/<server>` to the front.

The HTTP ext_authz server (authz/ext_authz_http.py) hands these requests
here whole and writes the reply; Envoy sends them on a virtual server's
route with the caller headers it set (translate/virtual_mcp.py). Like every
port of the policy service, it trusts what reaches it: keep it where only
Envoy does; a gateway with a `policyService.secret` has its requests refused
without it first (authz/ext_authz_http.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING

from xds_server.authz.vmcp.front import Reply
from xds_server.core.wire import VMCP_PREFIX
from xds_server.ir.mcp import McpRouteIR

if TYPE_CHECKING:
    from xds_server.authz.service import PolicyService


async def virtual_reply(service: PolicyService, method: str, path: str, headers: Mapping[str, str],
                        body: bytes) -> Reply:  # fmt: skip
    """The answer to one request for `path` (which starts with VMCP_PREFIX)."""
    gateway, _, server = path[len(VMCP_PREFIX) :].partition("/")
    view = service.index.route(server)
    if (view is None or view.gateway.name != gateway or not isinstance(view.route.protocol, McpRouteIR)
            or view.route.protocol.virtual is None):  # fmt: skip
        return Reply(404, json.dumps({"error": f"no virtual server {server!r} on gateway {gateway!r} in the policy "
                                      "service's current policies"}).encode(), {"content-type": "application/json"})  # fmt: skip
    return await service.vmcp.handle(view, method, headers, body)


def http_head(reply: Reply, *, chunked: bool = False) -> bytes:
    """The status line and headers of `reply` (its length, or chunked for a stream)."""
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Error"
    size = "transfer-encoding: chunked" if chunked else f"content-length: {len(reply.body)}"
    lines = [f"HTTP/1.1 {reply.status} {reason}", size]
    # Header values are ours or a member's session id (printable ASCII): never a line break.
    lines += [f"{name}: {value.replace(chr(13), ' ').replace(chr(10), ' ')}" for name, value in reply.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_response(reply: Reply) -> bytes:
    """The HTTP/1.1 response carrying `reply` (a whole body)."""
    return http_head(reply) + reply.body
