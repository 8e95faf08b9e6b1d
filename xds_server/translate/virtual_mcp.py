"""Virtual MCP servers in Envoy: calls routed to their member natively, with the member's name restored.

A virtual server's route is an MCP route (translate/protocols/mcp.py does its
RBAC, local replies and policy-service routes, on the names clients see);
its upstream is the policy service's HTTP port (authz/vmcp/), which answers
what needs every member. In front of those, per native member
(`VirtualServerIR.native_members`: every name prefixed, the member speaks
2026-07-28), Envoy routes by itself the `tools/call` and `prompts/get` of
2026-07-28 clients whose `params.name` starts with the member's prefix:

- the route matches the MCP filter's metadata (the method, the name's
  prefix, the curation: an excluded or renamed-away tool never matches, so it
  goes to the policy service, which refuses it) and the protocol header;
- the member's cluster (`mcp/<backend>`, the same cluster as the backend's own
  route) and its path;
- the Lua filter `RESTORE_NAME_FILTER` (lua/restore_name.lua), on these
  routes only, strips the prefix from params.name in the body and from the
  `mcp-name` header; the route's metadata names the prefix. It runs after RBAC
  and the policy service's decisions, which see the names clients see.

Legacy clients, stateful members, renamed or unprefixed names and lists all
go to the policy service.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from xds_server.core import errors
from xds_server.core.wire import MCP_METADATA_NAMESPACE, typed
from xds_server.ir.mcp import McpRouteIR
from xds_server.ir.patterns import NamePattern, PatternKind
from xds_server.ir.types import GatewayIR, RouteIR
from xds_server.ir.virtual_mcp import STATELESS_REVISION, VirtualMemberIR, VirtualServerIR
from xds_server.translate.cluster import upstream_cluster, upstream_load_assignment
from xds_server.translate.filters import HttpFilter, RouteDefault, Slot, disabled
from xds_server.translate.protocols.mcp import route_method_matcher, string_matcher
from xds_server.translate.replies import all_of, cel_filter, mapper, status_is

RESTORE_NAME_FILTER = "agentxds.vmcp.restore_name"
LUA_TYPE = "envoy.extensions.filters.http.lua.v3.Lua"
LUA_PER_ROUTE = "envoy.extensions.filters.http.lua.v3.LuaPerRoute"
PROTOCOL_HEADER = "mcp-protocol-version"
NATIVE_METHODS = ("prompts/get", "tools/call")
#: How long a legacy client's stream of server messages may stay silent (its client then opens another).
STREAM_IDLE_TIMEOUT = "300s"
#: What a visible name is made of (policy/virtual_mcp.py VISIBLE_NAME_PATTERN), as an RE2 class.
NAME_CHARACTERS = r"[A-Za-z0-9_.\-/]"


def virtual_part(route: RouteIR) -> VirtualServerIR | None:
    part = route.protocol
    return part.virtual if isinstance(part, McpRouteIR) else None


def native_routes(gateway: GatewayIR) -> list[tuple[RouteIR, VirtualServerIR]]:
    return [(r, v) for r in gateway.routes if (v := virtual_part(r)) is not None and v.native_members]


@cache
def _lua_source() -> str:
    text = resources.files("xds_server.translate").joinpath("lua/restore_name.lua").read_text()
    return f"local INVALID_REQUEST_CODE = {errors.INVALID_REQUEST.code}\n{text}"


def http_filters(gateway: GatewayIR) -> list[HttpFilter]:
    """The name-restoring Lua filter, where some virtual server has native members (off by default)."""
    if not native_routes(gateway):
        return []
    return [HttpFilter(RESTORE_NAME_FILTER, Slot.RESTORE, typed(LUA_TYPE, {"default_source_code": {
        "inline_string": _lua_source()}}), route_default=RouteDefault.OFF, off=disabled(LUA_PER_ROUTE))]  # fmt: skip


def member_cluster_name(member: VirtualMemberIR) -> str:
    """The member's cluster: the one its own MCP route has (`mcp/<backend>`), built from the same upstream."""
    return f"mcp/{member.backend}"


def _name_is(value: dict[str, Any], invert: bool = False) -> dict[str, Any]:
    matcher = {"filter": MCP_METADATA_NAMESPACE, "path": [{"key": "params"}, {"key": "name"}], "value": value}
    return {**matcher, "invert": True} if invert else matcher


def _one_of(patterns: list[NamePattern]) -> dict[str, Any]:
    matchers = [string_matcher(p) for p in patterns]
    return matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}


def member_match(route: RouteIR, virtual: VirtualServerIR, member: VirtualMemberIR, method: str) -> dict[str, Any]:
    """A route match for `method` calls of a 2026-07-28 client naming one of `member`'s visible names."""
    prefix = member.prefix + virtual.separator
    metadata = [
        route_method_matcher(method),
        # The prefix, then only the characters a visible name may have (so that no glob below can be
        # dodged by a name RE2's `.` does not match, such as one with a line break).
        _name_is({"string_match": {"safe_regex": {"regex": f"^{re.escape(prefix)}{NAME_CHARACTERS}+$"}}}),
    ]
    if method == "tools/call":
        # Curation is on tools: what is not shown is not routed (the policy service refuses it), and a
        # renamed tool's names, old and new, go to the policy service too (the new one may even carry
        # another member's prefix-like text: only the lists say whose it is).
        if not any(p.kind is PatternKind.ANY for p in virtual.include):
            metadata.append(_name_is(_one_of(list(virtual.include))))
        renamed = sorted({name for pair in virtual.renames for name in pair})
        hidden = [*virtual.exclude, *(NamePattern(PatternKind.EXACT, name, name) for name in renamed)]
        if hidden:
            metadata.append(_name_is(_one_of(hidden), invert=True))
    return {"path": route.path, "headers": [{"name": PROTOCOL_HEADER, "string_match": {"exact": STATELESS_REVISION}}],
            "dynamic_metadata": metadata}  # fmt: skip


def member_action(route: RouteIR, member: VirtualMemberIR) -> dict[str, Any]:
    return {
        "cluster": member_cluster_name(member),
        "prefix_rewrite": member.upstream.path,
        "timeout": f"{route.request_timeout_ms / 1000:.3f}s",
        "idle_timeout": f"{route.idle_timeout_ms / 1000:.3f}s",
    }


def member_metadata(virtual: VirtualServerIR, member: VirtualMemberIR) -> dict[str, Any]:
    """The route metadata the Lua filter reads: the prefix to strip."""
    return {"filter_metadata": {RESTORE_NAME_FILTER: {"strip_prefix": member.prefix + virtual.separator}}}


def member_upstreams(gateway: GatewayIR) -> list[tuple[str, Any]]:
    """(cluster name, upstream) of every native member not already served by a route of `gateway`."""
    own = {f"mcp/{r.name}" for r in gateway.routes if isinstance(r.protocol, McpRouteIR) and r.protocol.virtual is None}
    out: dict[str, Any] = {}
    for _, virtual in native_routes(gateway):
        for member in virtual.native_members:
            name = member_cluster_name(member)
            if name not in own:
                out.setdefault(name, member.upstream)
    return sorted(out.items(), key=lambda item: item[0])


def member_clusters(gateway: GatewayIR) -> tuple[list[Cluster], list[ClusterLoadAssignment]]:
    clusters, assignments = [], []
    for name, upstream in member_upstreams(gateway):
        clusters.append(upstream_cluster(name, upstream))
        if (cla := upstream_load_assignment(name, upstream)) is not None:
            assignments.append(cla)
    return clusters, assignments


def member_failures(gateway: GatewayIR, request_id: str) -> list[dict[str, Any]]:
    """Local replies naming the member a native call could not reach (before the generic ones, which
    would name the virtual server)."""
    out = []
    for route, virtual in native_routes(gateway):
        for member in virtual.native_members:
            cluster = member_cluster_name(member)
            when = cel_filter(f"xds.route_name == '{route.name}' && xds.cluster_name == '{cluster}'")
            data = {"backend": member.backend, "virtualServer": route.name, "endpoint": "%UPSTREAM_HOST%",
                    "detail": "%RESPONSE_CODE_DETAILS%"}  # fmt: skip
            out.append(mapper(all_of(status_is(504), when), errors.BACKEND_TIMEOUT,
                              f"Backend '{member.backend}' of virtual server '{route.name}' did not answer in time",
                              request_id, keep_status=False, **data))  # fmt: skip
            out.append(mapper(all_of(status_is(500, "GE"), when), errors.BACKEND_UNAVAILABLE,
                              f"Backend '{member.backend}' of virtual server '{route.name}' is unavailable "
                              "(Envoy's detail: %RESPONSE_CODE_DETAILS%)", request_id, keep_status=True, **data))  # fmt: skip
    return out
