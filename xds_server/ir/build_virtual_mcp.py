"""How VirtualMCPServer documents become MCP routes with a virtual part (ir/virtual_mcp.py).

One route per virtual server a gateway serves. Its rules are those of the
MCPPolicies naming it (tools named as its clients see them), its pins those
of the MCPToolLock naming it, exactly as for an MCPBackend (ir/build_mcp.py).
Its upstream is the policy service's HTTP port, at `/vmcp/<gateway>/<name>`
(core/wire.py VMCP_PREFIX), where the fan-out happens; each member's own
upstream comes from its MCPBackend.
"""

from __future__ import annotations

from xds_server.core.wire import VMCP_PREFIX
from xds_server.ir import build_mcp, routes
from xds_server.ir.glob import compile_globs
from xds_server.ir.mcp import DriftAction, McpRouteIR, ScreeningMode, ToolGuardIR, with_decisions
from xds_server.ir.types import EndpointIR, PolicyServiceUse, RouteIR, UpstreamIR
from xds_server.ir.virtual_mcp import VirtualMemberIR, VirtualServerIR
from xds_server.policy.base import duration_ms
from xds_server.policy.load import PolicySet
from xds_server.policy.located import Located
from xds_server.policy.mcp import MCPBackend, MCPToolLock
from xds_server.policy.virtual_mcp import VirtualMCPServer

#: How long Envoy waits to connect to the policy service's HTTP port (it is near: same host or pod network).
_FRONT_CONNECT_MS = 1000
#: How often the pins of a virtual server are checked against what it lists.
_PIN_REFRESH_MS = 5000


def _members(located: Located[VirtualMCPServer], policy_set: PolicySet,
             build: routes.RouteBuild) -> tuple[VirtualMemberIR, ...]:  # fmt: skip
    backends = {b.name: b for b in policy_set.backends}
    out = []
    for i, member in enumerate(located.doc.spec.backends):
        at = ("spec", "backends", i, "backend")
        backend: Located[MCPBackend] | None = backends.get(member.backend)
        if backend is None:
            build.report(located, at, f"{member.backend!r} is a virtual MCP server: a virtual server's backends "
                         "are MCPBackends (virtual servers do not nest)")  # fmt: skip
            continue
        spec = backend.doc.spec
        if spec.runtime_endpoints:
            build.report(located, at, f"backend {member.backend!r} has runtimeEndpoints, which a virtual server "
                         "does not follow yet: give it fixed endpoints, or serve it on its own route")  # fmt: skip
            continue
        if spec.auth is not None or spec.credentials is not None:
            build.report(located, at, f"backend {member.backend!r} requires user tokens or delegated credentials, "
                         "which a virtual server does not pass on yet: serve it on its own route")  # fmt: skip
            continue
        out.append(VirtualMemberIR(
            backend=member.backend, prefix=member.prefix or member.backend,
            revisions=tuple(sorted(set(member.revisions))),
            upstream=routes.upstream(backend, build, spec.path),
        ))  # fmt: skip
    return tuple(out)


def _tool_guard(lock: Located[MCPToolLock] | None) -> ToolGuardIR | None:
    """Pins of the names clients see (`agentxds pin` of the virtual server's URL); tools it does not list are
    hidden. Read back through the virtual server itself, so a member's changed tool is seen as changed."""
    if lock is None:
        return None
    return ToolGuardIR(
        pins=build_mcp.pins_of(lock), unpinned=DriftAction.HIDE, screening=ScreeningMode.OFF, refresh_ms=_PIN_REFRESH_MS
    )


def build_routes(policy_set: PolicySet, build: routes.RouteBuild) -> list[RouteIR]:
    """The virtual servers of one gateway: one MCP route each, with the MCPPolicy rules naming it."""
    gateway = next(g for g in policy_set.gateways if g.name == build.gateway)
    front = gateway.doc.spec.policy_service
    out = []
    for located in policy_set.of(VirtualMCPServer):
        if policy_set.gateway_of(located) != build.gateway:
            continue
        doc, spec = located.doc, located.doc.spec
        name = doc.metadata.name
        policies = policy_set.policies_for(name)
        rules = [
            (f"{p.doc.metadata.name}/rules[{i}]", rule) for p in policies for i, rule in enumerate(p.doc.spec.rules)
        ]
        routes.check_user_providers(policies, build)
        grants, conditional = build.rule_parts(name, tuple(p.doc for p in policies),
                                               lambda rules=rules: build_mcp.rule_parts(rules, build))  # type: ignore[misc]  # fmt: skip
        lock = policy_set.lock_for(name)
        virtual = VirtualServerIR(
            name=name, separator=spec.naming.separator, mode=spec.naming.mode,
            members=_members(located, policy_set, build),
            include=compile_globs(spec.tools.include), exclude=compile_globs(spec.tools.exclude),
            renames=tuple(sorted(spec.tools.rename.items())),
            descriptions=tuple(sorted(spec.tools.descriptions.items())),
            fan_out_timeout_ms=spec.fan_out.timeout_ms, cache_ms=spec.fan_out.cache_ms,
            pinned=lock is not None,
        )  # fmt: skip
        request_ms = duration_ms(spec.request_timeout)
        route = RouteIR(
            name=name,
            path=doc.route_path,
            upstream=UpstreamIR(endpoints=(EndpointIR(front.host, front.ext_authz_http_port),),
                                path=f"{VMCP_PREFIX}{build.gateway}/{name}", connect_timeout_ms=_FRONT_CONNECT_MS,
                                tls=build.policy_service_tls),
            request_timeout_ms=request_ms,
            idle_timeout_ms=request_ms,
            grants=grants,
            conditional_rules=conditional,
            protocol=McpRouteIR(list_filtering=spec.list_filtering,
                                tool_guard=_tool_guard(lock),
                                virtual=virtual),
            policy_service=PolicyServiceUse(fail_open=spec.policy_service.fail_open,
                                            timeout_ms=spec.policy_service.timeout_ms),
            annotations=routes.annotations_of(located),
        )  # fmt: skip
        out.append(build.memo.same(("route", build.gateway, route.name), with_decisions(route)))
    return out
