"""PolicySet (validated documents) → IR (resolved, defaulted, sorted, with its material read).

The loader has already checked every reference, so this stage resolves:
which routes each gateway serves (each protocol's builder, `ROUTE_BUILDERS`),
which principals prove each agent on that gateway, what each agent may do on
each route, which requests need the policy service, and the files and secrets
the translators will need (API keys, JWKS files, certificates and keys, read
and checked by `materials`).

A file or secret that cannot be used is a policy diagnostic on the field
that names it; every one is collected and raised together (BuildRefused, a
PolicyError like the loader's). Any other exception here is a bug, reported
as such by the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xds_server.ir import build_a2a, build_mcp, build_virtual_mcp, materials
from xds_server.ir.memo import BuildMemo
from xds_server.ir.principals import SecretIR
from xds_server.ir.routes import RouteBuild, near, upstream_tls
from xds_server.ir.types import (
    IR,
    AgentIR,
    AnonymousPrincipal,
    ApiKeyPrincipal,
    DownstreamTlsIR,
    EndpointIR,
    GatewayIR,
    HeaderPrincipal,
    IdentityIR,
    JwtPrincipal,
    JwtProviderIR,
    ListenerIR,
    Principal,
    RouteIR,
    SpiffePrincipal,
    principal_sort_key,
)
from xds_server.policy.agent import Agent
from xds_server.policy.base import duration_ms
from xds_server.policy.diagnostics import Diagnostic, PolicyError
from xds_server.policy.gateway import Gateway
from xds_server.policy.load import PolicySet
from xds_server.policy.located import Located


class BuildRefused(PolicyError):
    """Policies that load but cannot be built (one diagnostic each): files or secrets they name
    that cannot be used, or references only a gateway can check (a route's user-token provider
    that is not one of its gateway's).

    `ir` is what could be built around them: incomplete, never to be
    translated, but it names every file the policies refer to, so the caller
    can follow them and rebuild once they are fixed.
    """

    def __init__(self, diagnostics: list[Diagnostic], ir: IR) -> None:
        super().__init__(diagnostics)
        self.ir = ir


#: How each protocol's routes are built from a policy set, for one gateway (a new protocol: one entry).
ROUTE_BUILDERS: tuple[Callable[[PolicySet, RouteBuild], list[RouteIR]], ...] = (
    build_mcp.build_routes,
    build_a2a.build_routes,
    build_virtual_mcp.build_routes,
)

# ---------------------------------------------------------------- agents


def _api_keys(policy_set: PolicySet, diagnostics: list[Diagnostic]) -> dict[str, SecretIR]:
    """Each agent's API key, read once for every gateway (agent name → key)."""
    keys = {}
    for located in policy_set.agents:
        identity = located.doc.spec.identity
        api_key = identity.api_key if identity is not None else None
        if api_key is None:
            continue
        ref = api_key.key
        file = near(located, ref.file)
        at = ("spec", "identity", "apiKey", "key", "env" if ref.env is not None else "file")
        try:
            keys[located.name] = materials.api_key(ref.env, file, f"API key ({ref.env or file})")
        except materials.MaterialError as exc:
            diagnostics.append(located.diagnostic(at, str(exc)))
    return keys


def _credential_headers(identity: IdentityIR) -> tuple[str, ...]:
    """Every header a credential can arrive in on this gateway, whether or not an agent uses it:
    a caller sending any of them is not anonymous. `authorization` always counts (a bearer
    token the gateway cannot check is still a credential the caller meant to present)."""
    names = {identity.api_key_header, "authorization", *(p.token_header for p in identity.jwt_providers)}
    if identity.trusted_header is not None:
        names.add(identity.trusted_header)
    return tuple(sorted(names))


def _agent_ir(
    located: Located[Agent], identity: IdentityIR, tls: DownstreamTlsIR | None, keys: dict[str, SecretIR]
) -> AgentIR:
    """The agent with the principals this gateway can check.

    A source counts only where the gateway can check it: a header identity on
    a gateway that trusts a header, a SPIFFE ID of the trust domain where
    client certificates are asked for, a JWT where the provider is defined. An agent left with no
    principal cannot be recognised on that gateway and gets no access there.
    """
    ident = located.doc.spec.identity
    principals: list[Principal] = []
    if located.name == identity.anonymous_agent:
        principals.append(AnonymousPrincipal(_credential_headers(identity), tls is not None and
                                             tls.trust_bundle_file is not None))  # fmt: skip
    if ident is None:
        return AgentIR(located.doc.metadata.name, tuple(principals))
    if identity.trusted_header and ident.header is not None:
        principals.append(HeaderPrincipal(identity.trusted_header, ident.header))
    if (
        ident.spiffe is not None
        and tls is not None
        and tls.trust_bundle_file is not None
        and (tls.trust_domain is None or ident.spiffe.startswith(f"spiffe://{tls.trust_domain}/"))
    ):
        # Only SPIFFE IDs of the gateway's trust domain: with optional client certificates that is
        # where the domain is enforced (the handshake does not match SANs then, see translate/tls.py).
        principals.append(SpiffePrincipal(ident.spiffe))
    if ident.jwt is not None and ident.jwt.provider in {p.name for p in identity.jwt_providers}:
        principals.append(JwtPrincipal(ident.jwt.provider, ident.jwt.claim, ident.jwt.value))
    if located.name in keys:
        principals.append(ApiKeyPrincipal(identity.api_key_header, keys[located.name]))
    return AgentIR(located.doc.metadata.name, tuple(sorted(principals, key=principal_sort_key)))


# ---------------------------------------------------------------- gateway


def _jwt_provider(located: Located[Gateway], index: int, provider: Any, build: RouteBuild) -> JwtProviderIR:
    jwks = provider.jwks
    at = ("spec", "identity", "jwtProviders", index, "jwks")
    file = near(located, jwks.file)
    what = f"JWT provider {provider.name}: jwks"
    document: str | None = None
    if file is not None:
        document = build.material(located, (*at, "file"), lambda: materials.jwks_file(file, f"{what}.file"))
    elif jwks.inline is not None:
        inline = jwks.inline
        document = build.material(located, (*at, "inline"), lambda: materials.checked_jwks(inline, f"{what}.inline"))
    return JwtProviderIR(
        name=provider.name, issuer=provider.issuer, audiences=tuple(provider.audiences),
        jwks=document, jwks_file=file, jwks_url=jwks.url, jwks_cache_ms=jwks.cache_ms,
        token_header=provider.token_header.lower(), groups_claim=provider.groups_claim,
    )  # fmt: skip


def _downstream_tls(located: Located[Gateway], build: RouteBuild) -> DownstreamTlsIR | None:
    tls = located.doc.spec.tls
    if tls is None:
        return None
    client = tls.client_certificates
    cert_file = near(located, tls.certificate_file) or ""
    key_file = near(located, tls.private_key_file) or ""
    bundle_file = near(located, client.trust_bundle_file) if client else None
    chain = build.material(located, ("spec", "tls", "certificateFile"),
                           lambda: materials.certificates(cert_file, "certificate"))  # fmt: skip
    key = None
    if chain is not None:
        leaf = chain[1][0]
        key = build.material(located, ("spec", "tls", "privateKeyFile"),
                             lambda: materials.private_key_for(key_file, leaf, cert_file))  # fmt: skip
    bundle = None
    if bundle_file is not None:
        bundle = build.material(located, ("spec", "tls", "clientCertificates", "trustBundleFile"),
                                lambda: materials.certificates(bundle_file, "trust bundle"))  # fmt: skip
    return DownstreamTlsIR(
        certificate_file=cert_file,
        certificate_pem=chain[0] if chain else "",
        private_key=key or SecretIR(None, key_file, ""),
        trust_bundle_file=bundle_file,
        trust_bundle_pem=bundle[0] if bundle else None,
        require_client_certificate=bool(client and client.required),
        trust_domain=client.trust_domain if client else None,
    )


def _lower(header: str | None) -> str | None:
    return header.lower() if header is not None else None


def _gateway_ir(
    located: Located[Gateway],
    policy_set: PolicySet,
    keys: dict[str, SecretIR],
    diagnostics: list[Diagnostic],
    memo: BuildMemo,
) -> GatewayIR:
    gateway = located.doc
    spec = gateway.spec
    header = spec.identity.trusted_header
    build = RouteBuild(gateway.metadata.name, IdentityIR(header.lower() if header else None), (), diagnostics, memo)
    identity = IdentityIR(
        trusted_header=header.lower() if header else None,
        jwt_providers=tuple(
            sorted(_jwt_provider(located, i, p, build) for i, p in enumerate(spec.identity.jwt_providers))
        ),
        api_key_header=spec.identity.api_key_header.lower(),
        agent_header=_lower(spec.identity.caller_headers.agent),
        user_header=_lower(spec.identity.caller_headers.user),
        anonymous_agent=spec.identity.anonymous.agent if spec.identity.anonymous is not None else None,
    )
    tls = _downstream_tls(located, build)
    agents = tuple(sorted((memo.same(("agent", gateway.metadata.name, a.name), _agent_ir(a, identity, tls, keys))
                           for a in policy_set.agents), key=lambda a: a.name))  # fmt: skip
    agents = memo.same(("agents", gateway.metadata.name), agents)
    service_tls = upstream_tls(located, build, spec.policy_service.tls, ("spec", "policyService", "tls"))
    build = RouteBuild(gateway.metadata.name, identity, agents, diagnostics, memo, service_tls)
    routes = [route for builder in ROUTE_BUILDERS for route in builder(policy_set, build)]
    return GatewayIR(
        name=gateway.metadata.name,
        identity=identity,
        agents=agents,
        listener=ListenerIR(
            address=spec.listen.address,
            port=spec.listen.port,
            max_request_body_bytes=spec.limits.max_request_body_bytes,
            connection_buffer_bytes=spec.limits.connection_buffer_bytes,
            request_headers_timeout_ms=duration_ms(spec.limits.request_headers_timeout),
            request_receive_timeout_ms=duration_ms(spec.limits.request_receive_timeout),
            connection_idle_timeout_ms=duration_ms(spec.limits.connection_idle_timeout),
            max_request_headers_kib=spec.limits.max_request_headers_kib,
            max_headers=spec.limits.max_headers,
            max_connections=spec.limits.max_connections,
            routes=tuple(sorted(routes, key=lambda r: (r.name, r.kind))),
            tls=tls,
        ),
        policy_service=EndpointIR(spec.policy_service.host, spec.policy_service.port),
        ext_authz_http=(
            EndpointIR(spec.policy_service.host, spec.policy_service.ext_authz_http_port)
            if spec.policy_service.ext_authz == "http"
            else None
        ),  # fmt: skip
        denial_status=spec.denials.http_status,
        sealing_key=_sealing_key(located, build),
        policy_service_secret=_policy_service_secret(located, build, "secret"),
        policy_service_previous_secret=_policy_service_secret(located, build, "previousSecret"),
        policy_service_tls=service_tls,
    )


def _policy_service_secret(located: Located[Gateway], build: RouteBuild, key: str) -> SecretIR | None:
    service = located.doc.spec.policy_service
    ref = service.secret if key == "secret" else service.previous_secret
    if ref is None:
        return None
    file = near(located, ref.file)
    at = ("spec", "policyService", key, "env" if ref.env is not None else "file")
    found = build.material(located, at, lambda: materials.policy_service_secret(ref.env, file))
    return found if found is not None else SecretIR(ref.env, file, "")  # a refused build still names the file


def _sealing_key(located: Located[Gateway], build: RouteBuild) -> SecretIR | None:
    ref = located.doc.spec.sealing_key
    if ref is None:
        return None
    file = near(located, ref.file)
    at = ("spec", "sealingKey", "env" if ref.env is not None else "file")
    key = build.material(located, at, lambda: materials.sealing_key(ref.env, file))
    # A refused build still names the file, so that fixing it rebuilds.
    return key if key is not None else SecretIR(ref.env, file, "")


def build_ir(policy_set: PolicySet, memo: BuildMemo | None = None) -> IR:
    """Resolve a validated policy set into the IR, reading the material it references.

    Deterministic for the same policies and files. Raises BuildRefused (a
    PolicyError) with a diagnostic per referenced file or secret that cannot be used.
    With `memo`, what the last builds made of unchanged documents is reused
    (ir/memo.py); the IR is equal either way.
    """
    memo = memo if memo is not None else BuildMemo()
    diagnostics: list[Diagnostic] = []
    keys = _api_keys(policy_set, diagnostics)
    gateways = sorted(policy_set.gateways, key=lambda g: g.doc.metadata.name)
    ir = IR(gateways=tuple(_gateway_ir(g, policy_set, keys, diagnostics, memo) for g in gateways))
    memo.end_build()
    if diagnostics:
        raise BuildRefused(diagnostics, ir)
    return ir
