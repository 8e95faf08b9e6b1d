"""What an MCP grant lets an agent use, as Envoy's RBAC decides it (pure functions over a route view).

`may_use` is what lists show a caller: tools it may call at all (some only
with some arguments, or under conditions), prompts it may get, resources it
may read, and resource templates to agents that may read some resource.
`has_unconditional_tool` is whether a grant without conditions allows a
call (a tool granted outright, or only with arguments that match), in which
case the policy service decides nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from xds_server.authz.state import RouteView
from xds_server.ir.glob import glob_matches
from xds_server.ir.mcp import ArgumentGrantIR, ArgumentMatchIR, McpAllowsIR, mcp_allows
from xds_server.ir.patterns import NamePattern
from xds_server.ir.principals import JwtPayloads


def _any_match(patterns: tuple[NamePattern, ...], name: str) -> bool:
    return any(glob_matches(p, name) for p in patterns)


def _allows(allows: McpAllowsIR, kind: str, name: str) -> bool:
    if kind == "tools":
        return _any_match(allows.listed_tools, name)
    if kind == "prompts":
        return _any_match(allows.prompts, name)
    if kind == "resources":
        return _any_match(allows.resources, name)
    if kind == "resourceTemplates":
        # A template is not a URI: show it to agents that may read some resource.
        return bool(allows.resources)
    return False


def may_use(view: RouteView, agent: str, kind: str, name: str, jwt_payloads: JwtPayloads | None = None) -> bool:
    """Whether `agent` (acting for the user of `jwt_payloads`) may use a list item of `kind`
    ("tools", "prompts", "resources", "resourceTemplates") named `name`."""
    return any(_allows(mcp_allows(g.allows), kind, name) for g in view.grants_for(agent, jwt_payloads))


def has_unconditional_tool(
    view: RouteView, agent: str, tool: str, jwt_payloads: JwtPayloads | None = None,
    arguments: Mapping[str, Any] | None = None,
) -> bool:  # fmt: skip
    """Whether a grant without conditions lets `agent` call `tool` (with `arguments`, when given: a
    grant only with matching arguments counts when they match, as RBAC checks them)."""
    for grant in view.grants_for(agent, jwt_payloads):
        allows = mcp_allows(grant.allows)
        if _any_match(allows.tools, tool):
            return True
        if arguments is not None and any(_arguments_match(a, tool, arguments) for a in allows.argument_grants):
            return True
    return False


def _arguments_match(grant: ArgumentGrantIR, tool: str, arguments: Mapping[str, Any]) -> bool:
    """Whether `grant` lets `tool` be called with `arguments` (every condition holds on a string)."""
    return _any_match(grant.tools, tool) and all(_argument_matches(m, arguments.get(m.name)) for m in grant.arguments)


def _argument_matches(match: ArgumentMatchIR, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if match.kind in ("exact", "one_of"):
        return value in match.values
    if match.kind == "prefix":
        return value.startswith(match.values[0])
    if match.kind == "suffix":
        return value.endswith(match.values[0])
    # RE2's \d \w \s are ASCII; the policy model keeps to the syntax both read.
    return re.fullmatch(match.values[0], value, re.ASCII) is not None
