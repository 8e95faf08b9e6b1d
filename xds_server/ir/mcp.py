"""The MCP part of the IR.

An MCP route is the neutral `RouteIR` (path, upstream, grants, conditional
rules, decision needs, ...) with an `McpRouteIR` protocol part (list
filtering, the tool guard), and each grant allows an `McpAllowsIR`: which
tools it may call (plainly, under conditions, or only with matching
arguments), which resources it may read and which prompts it may get.
How MCPBackend and MCPPolicy documents become these: ir/build_mcp.py.

What goes to the policy service (`DecisionNeedsIR`, `with_decisions`),
decided here once for the translators and the policy service alike:
- every request, on a backend with delegated credentials;
- `tools/call` of any tool on a guarded backend (pins or screening), else of
  the tools a conditional rule covers that Envoy cannot decide alone (native
  rules are RBAC's);
- list responses, when lists are filtered per caller or tools are guarded;
- on a backend with tasks, the answers of calls that may create a task and
  the task methods (their ids are sealed per owner).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import ClassVar

from xds_server.ir.patterns import NamePattern, PatternKind
from xds_server.ir.types import DecisionNeedsIR, RouteIR
from xds_server.ir.virtual_mcp import VirtualServerIR

# ---------------------------------------------------------------- what a grant allows


@dataclass(frozen=True, order=True)
class ArgumentMatchIR:
    """One argument condition: `kind` is exact | prefix | suffix | regex | one_of; `values` has one
    value except for one_of. Checked by Envoy on metadata the MCP filter extracts."""

    name: str
    kind: str
    values: tuple[str, ...]


@dataclass(frozen=True, order=True)
class ArgumentGrantIR:
    """Tools granted only with matching arguments (one rule's `tools` + `arguments`)."""

    tools: tuple[NamePattern, ...]
    arguments: tuple[ArgumentMatchIR, ...]  # sorted by name; all must hold
    source: str  # "policy/rules[i]"


def _merged(patterns: set[NamePattern]) -> tuple[NamePattern, ...]:
    anything = [p for p in patterns if p.kind is PatternKind.ANY]
    return tuple(anything[:1]) if anything else tuple(sorted(patterns))


@dataclass(frozen=True, order=True)
class McpAllowsIR:
    """What an MCP grant allows: tools granted without conditions (decided by Envoy alone), tools
    of conditional rules the policy service decides (RBAC lets them through by name, then the
    policy service), tools only with matching arguments, resources (by URI) and prompts (by name).
    `native_tools` are those of rules whose condition Envoy evaluates: RBAC allows them per rule
    (from the route's conditional rules), so they are listed here only for the lists."""

    KIND: ClassVar[str] = "mcp"

    tools: tuple[NamePattern, ...]
    resources: tuple[NamePattern, ...]
    prompts: tuple[NamePattern, ...]
    conditional_tools: tuple[NamePattern, ...] = ()
    argument_grants: tuple[ArgumentGrantIR, ...] = ()
    native_tools: tuple[NamePattern, ...] = ()

    @property
    def listed_tools(self) -> tuple[NamePattern, ...]:
        """Tools the agent may call at all (some only with some arguments or under conditions): what its
        lists show."""
        return _merged(set(self.tools) | set(self.conditional_tools) | set(self.native_tools)
                       | {p for g in self.argument_grants for p in g.tools})  # fmt: skip


# ---------------------------------------------------------------- the route part


class DriftAction(enum.StrEnum):
    HIDE = "hide"  # hidden from lists and refused on call
    ALLOW = "allow"  # let through (logged)


class ScreeningMode(enum.StrEnum):
    OFF = "off"
    FLAG = "flag"  # logged and reported, tool stays usable
    BLOCK = "block"  # treated like drift: hidden and refused


@dataclass(frozen=True, order=True)
class PinnedToolIR:
    """What `agentxds pin` recorded for one tool: sha256 hex digests."""

    name: str
    description_sha256: str
    input_schema_sha256: str


@dataclass(frozen=True)
class ToolGuardIR:
    """Defences against a backend changing its tools under the gateway ("rug pulls").

    `pins` comes from the backend's MCPToolLock document (None: no lock, so
    nothing is pinned). A pinned tool whose description or input schema no
    longer matches is hidden from lists and refused on call until the lock is
    updated; `unpinned` says what happens to tools the lock does not list.
    `screening` checks descriptions for prompt-injection markers.
    """

    pins: tuple[PinnedToolIR, ...] | None  # sorted by name
    unpinned: DriftAction
    screening: ScreeningMode
    refresh_ms: int  # how often the policy service re-reads the backend's tools


@dataclass(frozen=True)
class McpRouteIR:
    """The MCP part of a route: list filtering per caller, and the tool guard (None: off)."""

    KIND: ClassVar[str] = "mcp"

    list_filtering: bool
    tool_guard: ToolGuardIR | None = None
    refusals_as_tool_results: bool = False  # a refused tools/call is answered as a result with isError
    tasks: bool = False  # callers use the tasks they created (ids sealed per owner by the policy service)
    virtual: VirtualServerIR | None = None  # a virtual server federating backends (ir/virtual_mcp.py)


def mcp_part(route: RouteIR) -> McpRouteIR:
    """The MCP part of an MCP route (a route of another protocol here is a bug)."""
    part = route.protocol
    if not isinstance(part, McpRouteIR):
        raise TypeError(f"route {route.name!r} is not an MCP route")
    return part


def mcp_allows(allows: object) -> McpAllowsIR:
    """What an MCP grant allows (a grant of another protocol here is a bug)."""
    if not isinstance(allows, McpAllowsIR):
        raise TypeError("not an MCP grant")
    return allows


# ---------------------------------------------------------------- what goes to the policy service


def with_decisions(route: RouteIR) -> RouteIR:
    """`route` with its decision needs derived from its rules, guard and credentials (see the module docstring)."""
    return replace(route, decisions=_decisions(route))


def _decisions(route: RouteIR) -> DecisionNeedsIR:
    from xds_server.ir.types import DecisionNeedsIR

    part = mcp_part(route)
    calls: tuple[NamePattern, ...] | None = None
    if part.tool_guard is not None:
        calls = ()  # every tool: any of them may have changed since it was pinned
    # Native rules are RBAC's alone, unless every request comes to the policy service anyway
    # (delegated credentials): then it decides over every rule before it attaches a credential.
    elif targets := {p for rule in route.conditional_rules if not rule.native or route.credentials is not None
                     for p in rule.targets}:  # fmt: skip
        calls = tuple(sorted(targets))
    return DecisionNeedsIR(
        every_request=route.credentials is not None,
        calls=calls,
        responses=part.list_filtering or part.tool_guard is not None,
        tasks=part.tasks,
    )
