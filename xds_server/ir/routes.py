"""The neutral part of building a route, shared by every routed kind (ir/mcp.py today).

A protocol's builder gets a `RouteBuild` for one gateway and calls these to
fill in what every route has: the upstream (endpoints, TLS material read and
checked), timeouts, user tokens, delegated credentials, how it uses the policy
service, its grants grouped per (agent, user) and its conditional rules. The
protocol only says what its rules grant (`allows`) and what they cover
(`targets`).

Problems with referenced files and secrets are collected as diagnostics on
the field that names them (`RouteBuild.report`); the IR builder raises them
together once every gateway is built.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from xds_server.core.cel_native import NotNative, native_condition
from xds_server.ir import materials
from xds_server.ir.memo import BuildMemo
from xds_server.ir.patterns import NamePattern
from xds_server.ir.principals import SecretIR
from xds_server.ir.types import (
    AgentIR,
    BackendAuthIR,
    ConditionalRuleIR,
    CredentialsIR,
    EndpointIR,
    GrantIR,
    HealthCheckIR,
    IdentityIR,
    PolicyServiceUse,
    QuotaIR,
    QuotaScope,
    RouteIR,
    UpstreamIR,
    UpstreamTlsIR,
    UserMatchIR,
)
from xds_server.policy.base import duration_ms
from xds_server.policy.diagnostics import Diagnostic
from xds_server.policy.diagnostics import Path as FieldPath
from xds_server.policy.located import Located
from xds_server.policy.rules import RuleBase

ANY_AGENT = "*"
T = TypeVar("T")
R = TypeVar("R", bound=RuleBase)


def near(located: Located[Any], path: str | None) -> str | None:
    """`path` as an absolute path, a relative one taken from the (real) directory of the file naming it.

    Symlinks after the path's last `..` are kept, not resolved: a rotation that swaps a link
    (a Kubernetes Secret volume's `..data`, `ln -sfn v2 current`) must be read through the link
    on the next build and by the policy service, and seen by the watcher in the directory that
    holds the link. Up to its last `..`, the path is resolved, so `..` means what the OS makes of it.
    """
    if path is None:
        return None
    parts = (Path(located.source.file).parent.resolve() / path).parts
    if ".." not in parts:
        return os.path.normpath(Path(*parts))  # drops `.` and doubled slashes only
    last = len(parts) - parts[::-1].index("..")
    return str(Path(*parts[:last]).resolve().joinpath(*parts[last:]))


@dataclass
class RouteBuild:
    """What building the routes of one gateway needs: its identity settings and agents, and
    where problems with referenced material are collected."""

    gateway: str
    identity: IdentityIR
    agents: tuple[AgentIR, ...]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    memo: BuildMemo = field(default_factory=BuildMemo)
    #: TLS to the gateway's policy service (`policyService.tls`), also a virtual server's front's upstream.
    policy_service_tls: UpstreamTlsIR | None = None

    def report(self, located: Located[Any], at: FieldPath, message: str) -> None:
        self.diagnostics.append(located.diagnostic(at, message))

    def material(self, located: Located[Any], at: FieldPath, read: Callable[[], T]) -> T | None:
        """`read()`, or None with a diagnostic on `at` when the material cannot be used."""
        try:
            return read()
        except materials.MaterialError as exc:
            self.report(located, at, str(exc))
            return None

    @functools.cached_property
    def recognisable(self) -> list[str]:
        """Agents this gateway can recognise (those with a principal here); computed once (the
        agents of a RouteBuild never change)."""
        return [a.name for a in self.agents if a.principals]

    def rule_parts(self, route: str, documents: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """What the rules of `documents` (policy models) make of a route (grants, conditional rules):
        a pure function of them, the identity settings and who is recognisable, so the last
        build's result stands while none of those changed. `compute` reads no file and reports
        no diagnostic (a reused result would lose it)."""
        key = ("rules", self.gateway, route, tuple(id(d) for d in documents), self.identity,
               tuple(self.recognisable))  # fmt: skip
        return self.memo.result(key, documents, compute)


# ---------------------------------------------------------------- upstream


def _upstream_tls(located: Located[Any], build: RouteBuild) -> UpstreamTlsIR | None:
    return upstream_tls(located, build, located.doc.spec.tls, ("spec", "tls"))


def upstream_tls(located: Located[Any], build: RouteBuild, tls: Any, at: FieldPath) -> UpstreamTlsIR | None:
    """TLS to an upstream as the document says at `at` (`tls`: its caFile, sni, certificateFile and
    privateKeyFile), the files read now; a file that cannot be used is a diagnostic on its field."""
    if tls is None:
        return None
    ca_file = near(located, tls.ca_file)
    cert_file = near(located, tls.certificate_file)
    key_file = near(located, tls.private_key_file)
    ca = build.material(located, (*at, "caFile"), lambda: materials.pem_text(ca_file, "CA file")) if ca_file else None
    cert = (
        build.material(located, (*at, "certificateFile"), lambda: materials.pem_text(cert_file, "certificate"))
        if cert_file
        else None
    )
    key = None
    if key_file:
        read = build.material(
            located, (*at, "privateKeyFile"), lambda: materials.private_key_text(key_file, "private key")
        )
        # When it cannot be read the build is refused; the path stays in the IR so that it is followed.
        key = read or SecretIR(None, key_file, "")
    return UpstreamTlsIR(ca_file, ca, tls.sni, cert_file, cert, key)


def upstream(located: Located[Any], build: RouteBuild, path: str) -> UpstreamIR:
    """The route's upstream: its endpoints (sorted, de-duplicated), `path` on them, TLS."""
    spec = located.doc.spec
    return UpstreamIR(
        endpoints=tuple(sorted({EndpointIR(e.host, e.port) for e in spec.endpoints})),
        path=path,
        connect_timeout_ms=spec.timeouts.connect_ms,
        tls=_upstream_tls(located, build),
        lb_policy={"roundRobin": "ROUND_ROBIN", "leastRequest": "LEAST_REQUEST"}[spec.load_balancing],
        health_check=_health_check(spec.health_check),
        runtime_endpoints=spec.runtime_endpoints,
    )


def _health_check(check: Any) -> HealthCheckIR | None:
    if check is None:
        return None
    return HealthCheckIR(duration_ms(check.interval), duration_ms(check.timeout), check.unhealthy_threshold,
                         check.healthy_threshold, check.path)  # fmt: skip


def auth(located: Located[Any], build: RouteBuild) -> BackendAuthIR | None:
    """The route's user-token requirement; its provider must be a JWT provider of the route's gateway."""
    spec = located.doc.spec
    if spec.auth is None:
        return None
    known = {p.name for p in build.identity.jwt_providers}
    if spec.auth.provider not in known:
        build.report(
            located,
            ("spec", "auth", "provider"),
            f"auth.provider {spec.auth.provider!r} is not a jwtProvider of gateway {build.gateway} "
            f"(known: {', '.join(sorted(known)) or 'none'})",
        )
    return BackendAuthIR(spec.auth.provider, spec.auth.resource, tuple(spec.auth.scopes))


def credentials(located: Located[Any]) -> CredentialsIR | None:
    creds = located.doc.spec.credentials
    if creds is None:
        return None
    if creds.token_exchange is not None:
        tx = creds.token_exchange
        return CredentialsIR(
            kind="token_exchange", token_endpoint=tx.token_endpoint, client_id=tx.client_id,
            client_secret_env=tx.client_secret.env, client_secret_file=near(located, tx.client_secret.file),
            audience=tx.audience, scope=tx.scope,
        )  # fmt: skip
    secrets = creds.per_user_secrets
    assert secrets is not None
    return CredentialsIR(kind="per_user_secrets", header=secrets.header.lower(),
                         secrets_file=near(located, secrets.file), format=secrets.format)  # fmt: skip


def policy_service(located: Located[Any]) -> PolicyServiceUse:
    use = located.doc.spec.policy_service
    return PolicyServiceUse(fail_open=use.fail_open, timeout_ms=use.timeout_ms)


def annotations_of(located: Located[Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(located.doc.metadata.annotations.items()))


# ---------------------------------------------------------------- rules


def check_user_providers(policies: Sequence[Located[Any]], build: RouteBuild) -> None:
    """Report each rule whose `users.provider` is not a JWT provider of the route's gateway: its grant
    could never match (Envoy verifies no token of it there), and nothing but Envoy may vouch for one."""
    known = {p.name for p in build.identity.jwt_providers}
    for policy in policies:
        for i, rule in enumerate(policy.doc.spec.rules):
            if rule.users is not None and rule.users.provider not in known:
                build.report(policy, ("spec", "rules", i, "users", "provider"),
                             f"users.provider {rule.users.provider!r} is not a jwtProvider of gateway "
                             f"{build.gateway} (known: {', '.join(sorted(known)) or 'none'})")  # fmt: skip


def user_match(rule: RuleBase, identity: IdentityIR) -> UserMatchIR | None:
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


def named_agents(rule: RuleBase, recognisable: list[str], known: frozenset[str] | None = None) -> list[str]:
    """The agents a rule names that the gateway can recognise (`known`: the same as a set, if at hand)."""
    if ANY_AGENT in rule.agents:
        return recognisable
    members = known if known is not None else frozenset(recognisable)
    return [n for n in rule.agents if n in members]


GrantKey = tuple[str, UserMatchIR | None]


def grants(
    rules: Sequence[tuple[str, R]], build: RouteBuild, allows: Callable[[list[tuple[str, R]]], Any]
) -> tuple[GrantIR, ...]:
    """One grant per (agent, user match): rules limited to some users are granted apart.

    `allows(rules)` is the protocol's part: what the rules naming one agent
    (for one user match), in policy order, allow together.
    """
    by_key: dict[GrantKey, list[tuple[str, R]]] = defaultdict(list)
    recognisable = build.recognisable  # once: it walks every agent
    known = frozenset(recognisable)
    for rule_id, rule in rules:
        user = user_match(rule, build.identity)
        for name in named_agents(rule, recognisable, known):
            by_key[(name, user)].append((rule_id, rule))
    return tuple(
        GrantIR(
            agent=key[0], user=key[1], sources=tuple(sorted({i for i, _ in by_key[key]})), allows=allows(by_key[key])
        )
        for key in sorted(by_key, key=lambda k: (k[0], k[1] is not None, k[1] or ()))
    )


def why_not_native(rule: RuleBase) -> str:
    """Why the policy service decides `rule` (a conditional one), or "" when Envoy decides it alone."""
    if rule.quota is not None:
        return "it has a quota (counted by the policy service)"
    if rule.require_approval:
        return "it needs approvals (kept by the policy service)"
    assert rule.when is not None
    try:
        native_condition(rule.when)
    except NotNative as exc:
        return f"its condition is not one Envoy evaluates: {exc}"
    return ""


def conditional_rules(
    rules: Sequence[tuple[str, R]], build: RouteBuild, targets: Callable[[R], tuple[NamePattern, ...]]
) -> tuple[ConditionalRuleIR, ...]:
    """The rules the policy service checks (a condition, a quota or an approval), in policy order."""
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
                agents=tuple(sorted(named_agents(rule, build.recognisable))),
                targets=targets(rule),
                when=rule.when,
                quota=quota,
                require_approval=rule.require_approval,
                approval_ttl_ms=rule.approval_ttl_ms,
                user=user_match(rule, build.identity),
                native=not (reason := why_not_native(rule)),
                not_native=reason,
            )
        )
    return tuple(out)


def route(located: Located[Any], build: RouteBuild, *, grants: tuple[GrantIR, ...],
          conditional: tuple[ConditionalRuleIR, ...], protocol: Any) -> RouteIR:  # fmt: skip
    """The route of one routed document (any kind: its spec is a `RouteSpec` with `route`/`path`, the
    document has `route_path`): the neutral parts from the document, `protocol` the protocol's part."""
    doc, spec = located.doc, located.doc.spec
    return RouteIR(
        name=doc.metadata.name,
        path=doc.route_path,
        upstream=upstream(located, build, spec.path),
        request_timeout_ms=spec.timeouts.request_ms,
        idle_timeout_ms=spec.timeouts.idle_ms,
        grants=grants,
        protocol=protocol,
        conditional_rules=conditional,
        policy_service=policy_service(located),
        auth=auth(located, build),
        credentials=credentials(located),
        annotations=annotations_of(located),
        hosts=tuple(sorted(set(spec.hosts))),
    )
