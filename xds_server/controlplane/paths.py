"""`agentxds render DIR --to paths`: where each rule is decided, Envoy alone or the policy service.

Read from the IR only (what the translators and the policy service read):

    gateway demo
      backend github (/mcp/github)
        github/rules[0]  envoy: a grant without conditions
        github/rules[1]  envoy: native CEL: args.repo.startsWith("acme/")
        github/rules[2]  policy service: it has a quota (counted by the policy service)

A backend whose every call (tool guard) or request (delegated credentials)
goes to the policy service says so first; its rules' own paths still say
what Envoy checks before.
"""

from __future__ import annotations

import re

from xds_server.ir.mcp import McpRouteIR
from xds_server.ir.types import IR, GatewayIR, RouteIR

_RULE_INDEX = re.compile(r"^(.*)/rules\[(\d+)\]$")


def _order(rule_id: str) -> tuple[str, int]:
    """Policy order: by policy name, then rule index (rules[10] after rules[9])."""
    m = _RULE_INDEX.match(rule_id)
    return (m.group(1), int(m.group(2))) if m else (rule_id, -1)


def route_paths(route: RouteIR) -> list[tuple[str, str]]:
    """(rule id, where it is decided) for every rule on `route`, in policy order."""
    paths: dict[str, str] = {}
    for grant in route.grants:
        for source in grant.sources:
            paths[source] = "envoy: a grant without conditions"
        for argument_grant in getattr(grant.allows, "argument_grants", ()):
            paths[argument_grant.source] = "envoy: argument conditions"
    for rule in route.conditional_rules:
        if rule.native:
            paths[rule.id] = f"envoy: native CEL: {rule.when}"
        else:
            paths[rule.id] = f"policy service: {rule.not_native}"
    return sorted(paths.items(), key=lambda item: _order(item[0]))


def _route_note(route: RouteIR) -> str | None:
    if route.kind == "a2a":
        return ("every request also goes through the policy service (ext_proc: read strictly, task ids sealed per "
                "caller), after Envoy's checks; Envoy decides the operation")  # fmt: skip
    virtual = route.protocol.virtual if isinstance(route.protocol, McpRouteIR) else None
    if virtual is not None:
        members = ", ".join(m.backend for m in virtual.members)
        native = ", ".join(m.backend for m in virtual.native_members)
        routed = (f"2026-07-28 clients' prefixed calls to {native} routed by Envoy, every other call passed on by "
                  "the policy service" if native else "every call passed on by the policy service")  # fmt: skip
        return f"virtual server over {members}: {routed}; lists read by the policy service"
    if route.decisions.every_request:
        return "every request goes to the policy service (delegated credentials), after Envoy's checks"
    if route.decisions.calls == ():
        return "every call goes to the policy service (tool guard), after Envoy's checks"
    return None


def _gateway_text(gateway: GatewayIR) -> list[str]:
    lines = [f"gateway {gateway.name}"]
    for route in gateway.routes:
        noun = "A2A agent" if route.kind == "a2a" else "backend"
        lines.append(f"  {noun} {route.name} ({route.path})")
        note = _route_note(route)
        if note:
            lines.append(f"    ({note})")
        paths = route_paths(route)
        width = max((len(rule) for rule, _ in paths), default=0)
        lines += [f"    {rule.ljust(width)}  {where}" for rule, where in paths]
        if not paths:
            lines.append("    (no rules: every call is refused)")
    return lines


def paths_text(ir: IR) -> str:
    """The report for every gateway of `ir`."""
    return "".join(line + "\n" for gateway in ir.gateways for line in _gateway_text(gateway))
