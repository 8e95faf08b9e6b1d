"""PolicySet (validated documents) → IR (resolved, defaulted, sorted).

The loader has already checked every reference, so this stage only resolves:
which backends belong to which gateway, which principals prove each agent on
that gateway, and what each agent may do on each backend (the union of every
rule that names it, with the rules' locations kept for explanations).
"""

from __future__ import annotations

from collections import defaultdict

from xds_server.ir.glob import compile_globs
from xds_server.ir.types import (
    IR,
    AgentIR,
    BackendIR,
    EndpointIR,
    GatewayIR,
    GrantIR,
    HeaderPrincipal,
    IdentityIR,
)
from xds_server.policy.load import PolicySet
from xds_server.policy.model import Agent, Gateway, Located, MCPBackend, MCPPolicy

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


def _grants(
    backend: MCPBackend, policies: tuple[Located[MCPPolicy], ...], agents: tuple[AgentIR, ...]
) -> tuple[GrantIR, ...]:
    recognisable = [a.name for a in agents if a.principals]
    tools: dict[str, list[str]] = defaultdict(list)
    resources: dict[str, list[str]] = defaultdict(list)
    prompts: dict[str, list[str]] = defaultdict(list)
    sources: dict[str, list[str]] = defaultdict(list)
    for located in policies:
        policy = located.doc
        if policy.spec.backend != backend.metadata.name:
            continue
        for index, rule in enumerate(policy.spec.rules):
            names = recognisable if ANY_AGENT in rule.agents else [n for n in rule.agents if n in recognisable]
            for name in names:
                tools[name] += rule.tools
                resources[name] += rule.resources
                prompts[name] += rule.prompts
                sources[name].append(f"{policy.metadata.name}/rules[{index}]")
    return tuple(
        GrantIR(
            agent=name,
            tools=compile_globs(tools[name]),
            resources=compile_globs(resources[name]),
            prompts=compile_globs(prompts[name]),
            sources=tuple(sorted(set(sources[name]))),
        )
        for name in sorted(sources)
    )


def _backend_ir(
    backend: MCPBackend, policies: tuple[Located[MCPPolicy], ...], agents: tuple[AgentIR, ...]
) -> BackendIR:
    spec = backend.spec
    return BackendIR(
        name=backend.metadata.name,
        route_path=backend.route_path,
        upstream_path=spec.path,
        endpoints=tuple(sorted({EndpointIR(e.host, e.port) for e in spec.endpoints})),
        connect_timeout_ms=spec.timeouts.connect_ms,
        request_timeout_ms=spec.timeouts.request_ms,
        idle_timeout_ms=spec.timeouts.idle_ms,
        grants=_grants(backend, policies, agents),
    )


def _gateway_ir(gateway: Gateway, policy_set: PolicySet) -> GatewayIR:
    spec = gateway.spec
    header = spec.identity.trusted_header
    identity = IdentityIR(trusted_header=header.lower() if header else None)
    agents = tuple(sorted((_agent_ir(a.doc, identity) for a in policy_set.agents), key=lambda a: a.name))
    backends = tuple(
        _backend_ir(b.doc, policy_set.policies, agents)
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
    )


def build_ir(policy_set: PolicySet) -> IR:
    """Resolve a validated policy set into the IR. Pure and deterministic."""
    gateways = sorted(policy_set.gateways, key=lambda g: g.doc.metadata.name)
    return IR(gateways=tuple(_gateway_ir(g.doc, policy_set) for g in gateways))
