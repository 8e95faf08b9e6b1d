"""PolicySet (validated documents) → IR (resolved, defaulted, sorted).

The loader has already checked every reference, so this stage only resolves:
which backends belong to which gateway, which principals prove each agent on
that gateway, what each agent may do on each backend (the union of every rule
that names it, with the rules' locations kept for explanations), and which
rules need the policy service (conditions, quotas, approvals).
"""

from __future__ import annotations

from collections import defaultdict

from xds_server.ir.glob import compile_globs
from xds_server.ir.types import (
    IR,
    AgentIR,
    BackendIR,
    ConditionalRuleIR,
    DriftAction,
    EndpointIR,
    GatewayIR,
    GrantIR,
    HeaderPrincipal,
    IdentityIR,
    PinnedToolIR,
    PolicyServiceUse,
    QuotaIR,
    QuotaScope,
    ScreeningMode,
    ToolGuardIR,
)
from xds_server.policy.load import PolicySet
from xds_server.policy.model import Agent, Gateway, Located, MCPBackend, MCPPolicy, MCPToolLock, Rule

ANY_AGENT = "*"


def _agent_ir(agent: Agent, identity: IdentityIR) -> AgentIR:
    """The agent with the principals this gateway can check.

    A header identity counts only on a gateway that trusts a header; an agent
    left with no principal cannot be recognised there and gets no access.
    """
    principals = []
    if identity.trusted_header and agent.spec.identity.header is not None:
        principals.append(HeaderPrincipal(identity.trusted_header, agent.spec.identity.header))
    return AgentIR(agent.metadata.name, tuple(sorted(principals)))


def _rules_of(backend: MCPBackend, policies: tuple[Located[MCPPolicy], ...]) -> list[tuple[str, Rule]]:
    """(rule id, rule) for every rule on `backend`, in policy-name then rule order."""
    return [
        (f"{p.doc.metadata.name}/rules[{i}]", rule)
        for p in policies
        if p.doc.spec.backend == backend.metadata.name
        for i, rule in enumerate(p.doc.spec.rules)
    ]


def _named_agents(rule: Rule, recognisable: list[str]) -> list[str]:
    return recognisable if ANY_AGENT in rule.agents else [n for n in rule.agents if n in recognisable]


def _grants(rules: list[tuple[str, Rule]], agents: tuple[AgentIR, ...]) -> tuple[GrantIR, ...]:
    recognisable = [a.name for a in agents if a.principals]
    tools: dict[str, list[str]] = defaultdict(list)
    conditional: dict[str, list[str]] = defaultdict(list)
    resources: dict[str, list[str]] = defaultdict(list)
    prompts: dict[str, list[str]] = defaultdict(list)
    sources: dict[str, list[str]] = defaultdict(list)
    for rule_id, rule in rules:
        for name in _named_agents(rule, recognisable):
            (conditional if rule.is_conditional else tools)[name] += rule.tools
            resources[name] += rule.resources
            prompts[name] += rule.prompts
            sources[name].append(rule_id)
    return tuple(
        GrantIR(
            agent=name,
            tools=compile_globs(tools[name]),
            resources=compile_globs(resources[name]),
            prompts=compile_globs(prompts[name]),
            sources=tuple(sorted(set(sources[name]))),
            conditional_tools=compile_globs(conditional[name]),
        )
        for name in sorted(sources)
    )


def _conditional_rules(rules: list[tuple[str, Rule]], agents: tuple[AgentIR, ...]) -> tuple[ConditionalRuleIR, ...]:
    recognisable = [a.name for a in agents if a.principals]
    out = []
    for rule_id, rule in rules:
        if not rule.is_conditional:
            continue
        quota = None
        if rule.quota is not None:
            quota = QuotaIR(rule.quota.calls, rule.quota.window_ms, QuotaScope(rule.quota.by))
        out.append(
            ConditionalRuleIR(
                id=rule_id,
                agents=tuple(sorted(_named_agents(rule, recognisable))),
                tools=compile_globs(rule.tools),
                when=rule.when,
                quota=quota,
                require_approval=rule.require_approval,
                approval_ttl_ms=rule.approval_ttl_ms,
            )
        )
    return tuple(out)


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
        pins=pins,
        unpinned=DriftAction(guard.unpinned),
        screening=ScreeningMode(guard.screening),
        refresh_ms=guard.refresh_ms,
    )


def _backend_ir(backend: MCPBackend, policy_set: PolicySet, agents: tuple[AgentIR, ...]) -> BackendIR:
    spec = backend.spec
    rules = _rules_of(backend, policy_set.policies)
    return BackendIR(
        name=backend.metadata.name,
        route_path=backend.route_path,
        upstream_path=spec.path,
        endpoints=tuple(sorted({EndpointIR(e.host, e.port) for e in spec.endpoints})),
        connect_timeout_ms=spec.timeouts.connect_ms,
        request_timeout_ms=spec.timeouts.request_ms,
        idle_timeout_ms=spec.timeouts.idle_ms,
        grants=_grants(rules, agents),
        conditional_rules=_conditional_rules(rules, agents),
        policy_service=PolicyServiceUse(
            fail_open=spec.policy_service.fail_open,
            timeout_ms=spec.policy_service.timeout_ms,
            list_filtering=spec.policy_service.list_filtering,
        ),
        tool_guard=_tool_guard(backend, policy_set.lock_for(backend.metadata.name)),
    )


def _gateway_ir(gateway: Gateway, policy_set: PolicySet) -> GatewayIR:
    spec = gateway.spec
    header = spec.identity.trusted_header
    identity = IdentityIR(trusted_header=header.lower() if header else None)
    agents = tuple(sorted((_agent_ir(a.doc, identity) for a in policy_set.agents), key=lambda a: a.name))
    backends = tuple(
        _backend_ir(b.doc, policy_set, agents)
        for b in sorted(policy_set.backends, key=lambda b: b.doc.metadata.name)
        if policy_set.gateway_of(b.doc) == gateway.metadata.name
    )
    return GatewayIR(
        name=gateway.metadata.name,
        listen_address=spec.listen.address,
        listen_port=spec.listen.port,
        max_request_body_bytes=spec.limits.max_request_body_bytes,
        connection_buffer_bytes=spec.limits.connection_buffer_bytes,
        identity=identity,
        agents=agents,
        backends=backends,
        policy_service=EndpointIR(spec.policy_service.host, spec.policy_service.port),
    )


def build_ir(policy_set: PolicySet) -> IR:
    """Resolve a validated policy set into the IR. Pure and deterministic."""
    gateways = sorted(policy_set.gateways, key=lambda g: g.doc.metadata.name)
    return IR(gateways=tuple(_gateway_ir(g.doc, policy_set) for g in gateways))
