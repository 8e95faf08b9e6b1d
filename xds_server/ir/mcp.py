"""The MCP part of the IR, and how MCPBackend and MCPPolicy documents become MCP routes.

An MCP route is the neutral `RouteIR` (path, upstream, grants, conditional
rules, decision needs, ...) with an `McpRouteIR` protocol part (list
filtering, the tool guard), and each grant allows an `McpAllowsIR`: which
tools it may call (plainly, under conditions, or only with matching
arguments), which resources it may read and which prompts it may get.

What goes to the policy service (`DecisionNeedsIR`), decided here once for
the translators and the policy service alike:
- every request, on a backend with delegated credentials;
- `tools/call` of any tool on a guarded backend (pins or screening), else of
  the tools a conditional rule covers;
- list responses, when lists are filtered per caller or tools are guarded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import ClassVar

from xds_server.ir import routes
from xds_server.ir.glob import compile_globs
from xds_server.ir.patterns import NamePattern, PatternKind
from xds_server.ir.types import DecisionNeedsIR, RouteIR
from xds_server.policy.load import PolicySet
from xds_server.policy.located import Located
from xds_server.policy.mcp import MCPBackend, MCPToolLock, Rule

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
    of conditional rules (Envoy, then the policy service), tools only with matching arguments,
    resources (by URI) and prompts (by name)."""

    KIND: ClassVar[str] = "mcp"

    tools: tuple[NamePattern, ...]
    resources: tuple[NamePattern, ...]
    prompts: tuple[NamePattern, ...]
    conditional_tools: tuple[NamePattern, ...] = ()
    argument_grants: tuple[ArgumentGrantIR, ...] = ()

    @property
    def all_tools(self) -> tuple[NamePattern, ...]:
        """Every tool the agent may call under some condition (what RBAC lets through by name)."""
        return _merged(set(self.tools) | set(self.conditional_tools))

    @property
    def listed_tools(self) -> tuple[NamePattern, ...]:
        """Tools the agent may call at all (some only with some arguments): what its lists show."""
        return _merged(set(self.all_tools) | {p for g in self.argument_grants for p in g.tools})


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


# ---------------------------------------------------------------- building


def _argument_grant(rule_id: str, rule: Rule) -> ArgumentGrantIR:
    matches = []
    for name, match in sorted(rule.arguments.items()):
        if match.one_of is not None:
            matches.append(ArgumentMatchIR(name, "one_of", tuple(sorted(set(match.one_of)))))
        else:
            kind, value = next((k, v) for k, v in (("exact", match.exact), ("prefix", match.prefix),
                               ("suffix", match.suffix), ("regex", match.regex)) if v is not None)  # fmt: skip
            matches.append(ArgumentMatchIR(name, kind, (value,)))
    return ArgumentGrantIR(compile_globs(rule.tools), tuple(matches), rule_id)


def _allows(rules: list[tuple[str, Rule]]) -> McpAllowsIR:
    """What the rules naming one agent (for one user match) allow together."""
    tools: list[str] = []
    conditional: list[str] = []
    with_arguments = []
    for rule_id, rule in rules:
        if rule.arguments:
            with_arguments.append(_argument_grant(rule_id, rule))
        else:
            (conditional if rule.is_conditional else tools).extend(rule.tools)
    return McpAllowsIR(
        tools=compile_globs(tools),
        resources=compile_globs([r for _, rule in rules for r in rule.resources]),
        prompts=compile_globs([p for _, rule in rules for p in rule.prompts]),
        conditional_tools=compile_globs(conditional),
        argument_grants=tuple(sorted(with_arguments)),
    )


def _tool_guard(backend: MCPBackend, lock: Located[MCPToolLock] | None) -> ToolGuardIR | None:
    guard = backend.spec.tool_guard
    if lock is None and guard.screening == "off":
        return None
    pins = None
    if lock is not None:
        pins = tuple(
            sorted(PinnedToolIR(t.name, t.description_sha256, t.input_schema_sha256) for t in lock.doc.spec.tools)
        )
    return ToolGuardIR(
        pins=pins, unpinned=DriftAction(guard.unpinned), screening=ScreeningMode(guard.screening),
        refresh_ms=guard.refresh_ms,
    )  # fmt: skip


def with_decisions(route: RouteIR) -> RouteIR:
    """`route` with its decision needs derived from its rules, guard and credentials (see the module docstring)."""
    return replace(route, decisions=_decisions(route))


def _decisions(route: RouteIR) -> DecisionNeedsIR:
    part = route.protocol
    calls: tuple[NamePattern, ...] | None = None
    if part.tool_guard is not None:
        calls = ()  # every tool: any of them may have changed since it was pinned
    elif route.conditional_rules:
        calls = tuple(sorted({p for rule in route.conditional_rules for p in rule.targets}))
    return DecisionNeedsIR(
        every_request=route.credentials is not None,
        calls=calls,
        responses=part.list_filtering or part.tool_guard is not None,
    )


def build_routes(policy_set: PolicySet, build: routes.RouteBuild) -> list[RouteIR]:
    """The MCP routes of one gateway: one per MCPBackend it serves, with the MCPPolicy rules on it."""
    out = []
    for located in policy_set.backends_of(build.gateway):
        backend = located.doc
        spec = backend.spec
        rules = [
            (f"{p.doc.metadata.name}/rules[{i}]", rule)
            for p in policy_set.policies_for(backend.metadata.name)
            for i, rule in enumerate(p.doc.spec.rules)
        ]
        route = RouteIR(
            name=backend.metadata.name,
            path=backend.route_path,
            upstream=routes.upstream(located, build, spec.path),
            request_timeout_ms=spec.timeouts.request_ms,
            idle_timeout_ms=spec.timeouts.idle_ms,
            grants=routes.grants(rules, build, _allows),
            protocol=McpRouteIR(
                list_filtering=spec.policy_service.list_filtering,
                tool_guard=_tool_guard(backend, policy_set.lock_for(backend.metadata.name)),
            ),
            conditional_rules=routes.conditional_rules(rules, build, lambda rule: compile_globs(rule.tools)),
            policy_service=routes.policy_service(located),
            auth=routes.auth(located, build),
            credentials=routes.credentials(located),
            annotations=routes.annotations_of(located),
        )
        out.append(with_decisions(route))
    return out
