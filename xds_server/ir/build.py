"""PolicySet (validated documents) → IR (resolved, defaulted, sorted).

The loader has already checked every reference, so this stage only resolves:
which backends belong to which gateway, which principals prove each agent on
that gateway, what each agent may do on each backend (the union of every rule
that names it, with the rules' locations kept for explanations), and which
rules need the policy service (conditions, quotas, approvals).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from xds_server.ir.glob import compile_globs
from xds_server.ir.types import (
    IR,
    AgentIR,
    ApiKeyPrincipal,
    ArgumentGrantIR,
    ArgumentMatchIR,
    BackendAuthIR,
    BackendIR,
    ConditionalRuleIR,
    CredentialsIR,
    DownstreamTlsIR,
    DriftAction,
    EndpointIR,
    GatewayIR,
    GrantIR,
    HeaderPrincipal,
    IdentityIR,
    JwtPrincipal,
    JwtProviderIR,
    PinnedToolIR,
    PolicyServiceUse,
    Principal,
    QuotaIR,
    QuotaScope,
    ScreeningMode,
    SpiffePrincipal,
    ToolGuardIR,
    UpstreamTlsIR,
    UserMatchIR,
    principal_sort_key,
)
from xds_server.policy.load import PolicySet
from xds_server.policy.model import Agent, Gateway, Located, MCPBackend, MCPPolicy, MCPToolLock, Rule

ANY_AGENT = "*"


def _near(located: Located[Any], path: str | None) -> str | None:
    """`path` as an absolute path, relative paths taken from the file that names it."""
    if path is None:
        return None
    return str((Path(located.source.file).parent / path).resolve())


def _agent_ir(located: Located[Agent], identity: IdentityIR, tls: DownstreamTlsIR | None) -> AgentIR:
    """The agent with the principals this gateway can check.

    A source counts only where the gateway can check it: a header identity on
    a gateway that trusts a header, a SPIFFE ID where client certificates are
    asked for, a JWT where the provider is defined. An agent left with no
    principal cannot be recognised on that gateway and gets no access there.
    """
    ident = located.doc.spec.identity
    principals: list[Principal] = []
    if identity.trusted_header and ident.header is not None:
        principals.append(HeaderPrincipal(identity.trusted_header, ident.header))
    if ident.spiffe is not None and tls is not None and tls.trust_bundle_file is not None:
        principals.append(SpiffePrincipal(ident.spiffe))
    if ident.jwt is not None and ident.jwt.provider in {p.name for p in identity.jwt_providers}:
        principals.append(JwtPrincipal(ident.jwt.provider, ident.jwt.claim, ident.jwt.value))
    if ident.api_key is not None:
        key = ident.api_key.key
        principals.append(ApiKeyPrincipal(identity.api_key_header, key.env, _near(located, key.file)))
    return AgentIR(located.doc.metadata.name, tuple(sorted(principals, key=principal_sort_key)))


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


def _user_match(rule: Rule, identity: IdentityIR) -> UserMatchIR | None:
    users = rule.users
    if users is None:
        return None
    provider = next((p for p in identity.jwt_providers if p.name == users.provider), None)
    return UserMatchIR(
        provider=users.provider,
        subjects=tuple(sorted(users.subjects)),
        groups=tuple(sorted(users.groups)),
        groups_claim=provider.groups_claim if provider else "groups",
        claims=tuple(sorted(users.claims.items())),
    )


GrantKey = tuple[str, UserMatchIR | None]


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


def _grants(rules: list[tuple[str, Rule]], agents: tuple[AgentIR, ...], identity: IdentityIR) -> tuple[GrantIR, ...]:
    """One grant per (agent, user match): rules limited to some users are granted apart."""
    recognisable = [a.name for a in agents if a.principals]
    tools: dict[GrantKey, list[str]] = defaultdict(list)
    conditional: dict[GrantKey, list[str]] = defaultdict(list)
    resources: dict[GrantKey, list[str]] = defaultdict(list)
    prompts: dict[GrantKey, list[str]] = defaultdict(list)
    sources: dict[GrantKey, list[str]] = defaultdict(list)
    with_arguments: dict[GrantKey, list[ArgumentGrantIR]] = defaultdict(list)
    for rule_id, rule in rules:
        user = _user_match(rule, identity)
        for name in _named_agents(rule, recognisable):
            key = (name, user)
            if rule.arguments:
                with_arguments[key].append(_argument_grant(rule_id, rule))
            else:
                (conditional if rule.is_conditional else tools)[key] += rule.tools
            resources[key] += rule.resources
            prompts[key] += rule.prompts
            sources[key].append(rule_id)
    return tuple(
        GrantIR(
            agent=key[0],
            tools=compile_globs(tools[key]),
            resources=compile_globs(resources[key]),
            prompts=compile_globs(prompts[key]),
            sources=tuple(sorted(set(sources[key]))),
            conditional_tools=compile_globs(conditional[key]),
            user=key[1],
            argument_grants=tuple(sorted(with_arguments[key])),
        )
        for key in sorted(sources, key=lambda k: (k[0], k[1] is not None, k[1] or ()))
    )


def _conditional_rules(
    rules: list[tuple[str, Rule]], agents: tuple[AgentIR, ...], identity: IdentityIR
) -> tuple[ConditionalRuleIR, ...]:
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
                user=_user_match(rule, identity),
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


def _credentials(located: Located[MCPBackend]) -> CredentialsIR | None:
    creds = located.doc.spec.credentials
    if creds is None:
        return None
    if creds.token_exchange is not None:
        tx = creds.token_exchange
        return CredentialsIR(
            kind="token_exchange", token_endpoint=tx.token_endpoint, client_id=tx.client_id,
            client_secret_env=tx.client_secret.env, client_secret_file=_near(located, tx.client_secret.file),
            audience=tx.audience, scope=tx.scope,
        )  # fmt: skip
    secrets = creds.per_user_secrets
    assert secrets is not None
    return CredentialsIR(kind="per_user_secrets", header=secrets.header.lower(),
                         secrets_file=_near(located, secrets.file), format=secrets.format)  # fmt: skip


def _upstream_tls(located: Located[MCPBackend]) -> UpstreamTlsIR | None:
    tls = located.doc.spec.tls
    if tls is None:
        return None
    return UpstreamTlsIR(_near(located, tls.ca_file), tls.sni, _near(located, tls.certificate_file),
                         _near(located, tls.private_key_file))  # fmt: skip


def _backend_ir(
    located: Located[MCPBackend], policy_set: PolicySet, agents: tuple[AgentIR, ...], identity: IdentityIR
) -> BackendIR:
    backend = located.doc
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
        grants=_grants(rules, agents, identity),
        conditional_rules=_conditional_rules(rules, agents, identity),
        policy_service=PolicyServiceUse(
            fail_open=spec.policy_service.fail_open,
            timeout_ms=spec.policy_service.timeout_ms,
            list_filtering=spec.policy_service.list_filtering,
        ),
        tool_guard=_tool_guard(backend, policy_set.lock_for(backend.metadata.name)),
        auth=BackendAuthIR(spec.auth.provider, spec.auth.resource, tuple(spec.auth.scopes)) if spec.auth else None,
        credentials=_credentials(located),
        upstream_tls=_upstream_tls(located),
    )


def _jwt_provider(located: Located[Gateway], provider: Any) -> JwtProviderIR:
    jwks = provider.jwks
    return JwtProviderIR(
        name=provider.name, issuer=provider.issuer, audiences=tuple(provider.audiences),
        jwks_inline=jwks.inline, jwks_file=_near(located, jwks.file), jwks_url=jwks.url,
        jwks_cache_ms=jwks.cache_ms, token_header=provider.token_header.lower(), groups_claim=provider.groups_claim,
    )  # fmt: skip


def _downstream_tls(located: Located[Gateway]) -> DownstreamTlsIR | None:
    tls = located.doc.spec.tls
    if tls is None:
        return None
    client = tls.client_certificates
    return DownstreamTlsIR(
        certificate_file=_near(located, tls.certificate_file) or "",
        private_key_file=_near(located, tls.private_key_file) or "",
        trust_bundle_file=_near(located, client.trust_bundle_file) if client else None,
        require_client_certificate=bool(client and client.required),
        trust_domain=client.trust_domain if client else None,
    )


def _gateway_ir(located: Located[Gateway], policy_set: PolicySet) -> GatewayIR:
    gateway = located.doc
    spec = gateway.spec
    header = spec.identity.trusted_header
    identity = IdentityIR(
        trusted_header=header.lower() if header else None,
        jwt_providers=tuple(sorted(_jwt_provider(located, p) for p in spec.identity.jwt_providers)),
        api_key_header=spec.identity.api_key_header.lower(),
    )
    tls = _downstream_tls(located)
    agents = tuple(sorted((_agent_ir(a, identity, tls) for a in policy_set.agents), key=lambda a: a.name))
    backends = tuple(
        _backend_ir(b, policy_set, agents, identity)
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
        ext_authz_http=(
            EndpointIR(spec.policy_service.host, spec.policy_service.ext_authz_http_port)
            if spec.policy_service.ext_authz == "http"
            else None
        ),
        tls=tls,
    )


def build_ir(policy_set: PolicySet) -> IR:
    """Resolve a validated policy set into the IR. Pure and deterministic."""
    gateways = sorted(policy_set.gateways, key=lambda g: g.doc.metadata.name)
    return IR(gateways=tuple(_gateway_ir(g, policy_set) for g in gateways))
