"""The intermediate representation: resolved, defaulted, sorted, serialisable.

The IR is what translators and the policy service see; they never see policy
models, and they read no files: every secret and file content they need is
already in it (redacted when rendered). Every collection is a sorted tuple,
so the same policies always give the same IR (and the same xDS bytes).

Shape:

    IR ─ gateways: GatewayIR            one Envoy node group (node.cluster = name)
           ├─ identity, agents           who may call (principals: ir/principals.py)
           ├─ policy_service             where Envoy reaches the policy service
           └─ listener: ListenerIR       address, limits, TLS
                └─ routes: RouteIR       the neutral part: path, upstream, timeouts,
                     │                   grants (who), conditional rules, decision
                     │                   needs, user tokens, delegated credentials
                     └─ protocol         the protocol part (ir/mcp.py: McpRouteIR; A2A,
                                         LLM and virtual MCP servers next)

A grant is neutral too (which agent, acting for which users, from which
rules) with a protocol part saying what it allows (`GrantIR.allows`: tools,
resources and prompts for MCP). A protocol's parts live in its own module
(ir/mcp.py) and are listed in ir/parts.py; nothing here changes for a new one.

`to_plain` turns any IR value into plain dicts and lists for YAML (goldens,
`agentxds render --to ir`), with a `kind` on every member of a union and
secrets redacted; `ir.load` reads that form back.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xds_server.core.secrets import redacted
from xds_server.ir.patterns import NamePattern, PatternKind
from xds_server.ir.principals import (
    AnonymousPrincipal,
    ApiKeyPrincipal,
    HeaderPrincipal,
    JwtPrincipal,
    Principal,
    SecretIR,
    SpiffePrincipal,
    UserMatchIR,
    principal_sort_key,
)

__all__ = [
    "IR",
    "AgentIR",
    "AnonymousPrincipal",
    "ApiKeyPrincipal",
    "BackendAuthIR",
    "ConditionalRuleIR",
    "CredentialsIR",
    "DecisionNeedsIR",
    "DownstreamTlsIR",
    "EndpointIR",
    "GatewayIR",
    "GrantIR",
    "HeaderPrincipal",
    "IdentityIR",
    "JwtPrincipal",
    "JwtProviderIR",
    "ListenerIR",
    "NamePattern",
    "PatternKind",
    "PolicyServiceUse",
    "Principal",
    "QuotaIR",
    "QuotaScope",
    "RouteIR",
    "SecretIR",
    "SpiffePrincipal",
    "UpstreamIR",
    "UpstreamTlsIR",
    "UserMatchIR",
    "principal_sort_key",
    "to_plain",
]

if TYPE_CHECKING:  # the unions of every protocol's parts (ir/parts.py imports this module)
    from xds_server.ir.parts import GrantAllows, ProtocolPart


@dataclass(frozen=True, order=True)
class AgentIR:
    """A named agent and every principal that proves it is that agent on this gateway."""

    name: str
    principals: tuple[Principal, ...]


@dataclass(frozen=True, order=True)
class GrantIR:
    """What one agent may do on one route, acting for whichever user `user` admits (None:
    whoever, if anyone, the user is): the union of the rules that name it.

    `sources` names the rules that contributed ("policy-name/rules[2]"), so a
    denial or an explain can say which rule set decided; `allows` is the
    protocol's part (MCP: tools, resources, prompts).
    """

    agent: str
    user: UserMatchIR | None
    sources: tuple[str, ...]
    allows: GrantAllows


class QuotaScope(enum.StrEnum):
    """Whose calls a quota counts."""

    AGENT = "agent"  # per agent (all its users together)
    USER = "user"  # per user the agent acts for (all agents together)
    AGENT_USER = "agent+user"  # per (agent, user) pair


@dataclass(frozen=True, order=True)
class QuotaIR:
    """At most `calls` calls per `window_ms`, counted per target (tool) and per `scope`."""

    calls: int
    window_ms: int
    scope: QuotaScope


@dataclass(frozen=True, order=True)
class ConditionalRuleIR:
    """A rule the policy service checks on each call it covers.

    `id` is "policy-name/rules[i]" (stable across reloads while the rule keeps
    its place), `agents` the agent names it names ("*" already expanded),
    `targets` the patterns of what it covers (MCP: tool names). `when` is a CEL
    expression, already checked to compile; None means no condition. Native
    RBAC lets these calls through for these agents, then the policy service
    decides; a `native` rule (a `when` Envoy evaluates itself, see
    core/cel_native.py, and no quota or approval) is decided by RBAC alone.
    The policy service still reads every rule naming the caller's agent: when
    some other rule sends a call to it, it decides over all of them, natives
    included, with the same answer.
    """

    id: str
    agents: tuple[str, ...]
    targets: tuple[NamePattern, ...]
    when: str | None
    quota: QuotaIR | None
    require_approval: bool
    approval_ttl_ms: int
    user: UserMatchIR | None = None  # only when acting for such a user (checked by the policy service too)
    native: bool = False  # Envoy decides it alone
    not_native: str = ""  # why the policy service decides it (empty when native)


@dataclass(frozen=True)
class DecisionNeedsIR:
    """Which requests of a route go to the policy service: the translators route exactly these to
    ext_authz and ext_proc, and the policy service checks the same (it reads this, never Envoy config).

    `every_request`: every request (delegated credentials are attached to each).
    `calls`: the calls decided on, by target (MCP: `tools/call` by tool name); `()`
    every call, None none. `responses`: list responses are rewritten per caller.
    `tasks`: task ids are sealed per owner (MCP tasks): the answers of calls
    that may create a task, and the requests and answers of the task methods.
    """

    every_request: bool = False
    calls: tuple[NamePattern, ...] | None = None
    responses: bool = False
    tasks: bool = False

    @property
    def needed(self) -> bool:
        """Whether any request of the route goes to the policy service."""
        return self.every_request or self.calls is not None or self.responses or self.tasks


@dataclass(frozen=True)
class PolicyServiceUse:
    """How one route uses the policy service."""

    fail_open: bool  # service down or slow: allow (True) or refuse (False, the default)
    timeout_ms: int


@dataclass(frozen=True, order=True)
class EndpointIR:
    host: str
    port: int


@dataclass(frozen=True)
class UpstreamTlsIR:
    """TLS to a route's upstream; file contents read when the IR was built (paths kept for watching)."""

    ca_file: str | None  # absolute; None: the system's roots
    ca_pem: str | None
    sni: str | None
    certificate_file: str | None
    certificate_pem: str | None
    private_key: SecretIR | None  # its `file` is where it was read from


@dataclass(frozen=True)
class UpstreamIR:
    """Where a route's requests go: the endpoints (load balanced), the protocol endpoint's path
    there, the connect timeout and TLS."""

    endpoints: tuple[EndpointIR, ...]
    path: str
    connect_timeout_ms: int
    tls: UpstreamTlsIR | None = None
    lb_policy: str = "ROUND_ROBIN"  # Envoy's name: ROUND_ROBIN | LEAST_REQUEST
    health_check: HealthCheckIR | None = None
    runtime_endpoints: bool = False  # the endpoints may be set at run time (controlplane/runtime_endpoints.py)


@dataclass(frozen=True)
class HealthCheckIR:
    """Active health checks of a route's endpoints: a TCP connect, or an HTTP GET of `path` (2xx)."""

    interval_ms: int
    timeout_ms: int
    unhealthy_threshold: int
    healthy_threshold: int
    path: str | None = None


@dataclass(frozen=True)
class BackendAuthIR:
    """The route requires a user token from `provider` (OAuth resource server: RFC 9728 metadata
    and the 401 challenge; the MCP authorization spec)."""

    provider: str
    resource: str | None  # RFC 9728 `resource`; None: derived from the request's host and path
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class CredentialsIR:
    """What the upstream receives instead of the caller's credentials (set by the policy service).

    kind "token_exchange": RFC 8693 at `token_endpoint` with the user's token as subject_token.
    kind "per_user_secrets": `format` with the user's secret from `secrets_file` in `header`.
    The client secret and the secrets file stay references: the policy service reads them itself.
    """

    kind: str
    header: str = "authorization"
    token_endpoint: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    audience: str | None = None
    scope: str | None = None
    secrets_file: str | None = None
    format: str = "Bearer {secret}"


@dataclass(frozen=True)
class RouteIR:
    """One route of a gateway: a path clients use, served by one upstream, for one protocol.

    The neutral part is what every protocol has; `protocol` holds the rest.
    `name` is the routed document's name (unique across routed kinds, so bare
    names never collide); `path` the exact gateway path. `grants` is sorted
    by agent and has an entry per (agent, user match); an agent without a
    grant has no access at all. `conditional_rules` are in policy order.
    """

    name: str
    path: str
    upstream: UpstreamIR
    request_timeout_ms: int  # 0 = no timeout (long-lived streams)
    idle_timeout_ms: int  # 0 = never; no bytes either way for this long closes the stream
    grants: tuple[GrantIR, ...]
    protocol: ProtocolPart
    conditional_rules: tuple[ConditionalRuleIR, ...] = ()
    decisions: DecisionNeedsIR = DecisionNeedsIR()
    policy_service: PolicyServiceUse = PolicyServiceUse(fail_open=False, timeout_ms=250)
    auth: BackendAuthIR | None = None
    credentials: CredentialsIR | None = None
    annotations: tuple[tuple[str, str], ...] = ()  # the document's metadata.annotations, sorted
    hosts: tuple[str, ...] = ()  # served only for these Host names (sorted); () = any host

    @property
    def kind(self) -> str:
        """The protocol's name: "mcp", ..."""
        return self.protocol.KIND

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass(frozen=True, order=True)
class JwtProviderIR:
    """A JWT issuer Envoy checks tokens of.

    `jwks` is the JWKS document (written inline, or read from `jwks_file`,
    which is kept so that changes to it are followed); otherwise Envoy fetches
    `jwks_url`.
    """

    name: str
    issuer: str
    audiences: tuple[str, ...]
    jwks: str | None
    jwks_file: str | None  # absolute path
    jwks_url: str | None
    jwks_cache_ms: int
    token_header: str  # lower-case
    groups_claim: str


@dataclass(frozen=True)
class IdentityIR:
    """Where the gateway takes caller identity from."""

    trusted_header: str | None  # lower-case header name, or None if not trusted
    jwt_providers: tuple[JwtProviderIR, ...] = ()  # sorted by name
    api_key_header: str = "x-api-key"  # lower-case
    # Set by the gateway on forwarded requests (client copies removed); None: not sent.
    agent_header: str | None = "x-agentxds-agent"  # the verified agent's name
    user_header: str | None = "x-agentxds-user"  # the verified user's `sub`
    anonymous_agent: str | None = None  # the agent callers with no credential become; None: refused


@dataclass(frozen=True)
class DownstreamTlsIR:
    """TLS on the listener; contents read and checked when the IR was built (they go to Envoy
    over SDS), paths kept for watching."""

    certificate_file: str
    certificate_pem: str
    private_key: SecretIR  # its `file` is where it was read from
    trust_bundle_file: str | None  # set: client certificates are asked for (mTLS)
    trust_bundle_pem: str | None
    require_client_certificate: bool
    trust_domain: str | None


@dataclass(frozen=True)
class ListenerIR:
    """Where a gateway's Envoy accepts connections, its limits and TLS, and its routes
    (sorted by name; paths are unique on a gateway)."""

    address: str
    port: int
    max_request_body_bytes: int
    connection_buffer_bytes: int
    routes: tuple[RouteIR, ...]
    tls: DownstreamTlsIR | None = None
    request_headers_timeout_ms: int = 10_000  # 0: off
    request_receive_timeout_ms: int = 30_000  # the whole request (headers and body); 0: off
    connection_idle_timeout_ms: int = 60_000  # no request in flight; 0: never
    max_request_headers_kib: int = 60
    max_headers: int = 100
    max_connections: int | None = None  # on this listener; None: the Envoy process's limit only


@dataclass(frozen=True)
class GatewayIR:
    """One gateway: one Envoy node group (`node.cluster` == `name`), one listener."""

    name: str
    identity: IdentityIR
    agents: tuple[AgentIR, ...]  # every agent known to this gateway, sorted by name
    listener: ListenerIR
    policy_service: EndpointIR | None = None  # where Envoy reaches the policy service
    ext_authz_http: EndpointIR | None = None  # ext_authz over HTTP/1.1 here; None: over gRPC at policy_service
    denial_status: int = 200  # HTTP status of a policy refusal (an error kind whose own status is 403)
    sealing_key: SecretIR | None = None  # seals task ids; None: the policy service's own key
    # Envoy sends it with every request to the policy service, which refuses this gateway's without it.
    policy_service_secret: SecretIR | None = None
    policy_service_previous_secret: SecretIR | None = None  # still accepted (never sent) while it is replaced
    policy_service_tls: UpstreamTlsIR | None = None  # TLS to both policy-service clusters; None: plain

    @property
    def routes(self) -> tuple[RouteIR, ...]:
        return self.listener.routes

    @property
    def credential_headers(self) -> tuple[str, ...]:
        """The headers callers prove who they are with (sorted): the trusted header, the API-key
        header when some agent has a key, each JWT provider's token header. Each must appear
        at most once, with no comma, or the identity is ambiguous."""
        names = {p.token_header for p in self.identity.jwt_providers}
        if self.identity.trusted_header is not None:
            names.add(self.identity.trusted_header)
        if any(p.KIND == "apiKey" for a in self.agents for p in a.principals):
            names.add(self.identity.api_key_header)
        return tuple(sorted(names))

    def parts(self) -> list[Any]:
        """Every field of the gateway and of its listener, the routes one by one: the pieces a walk
        over the IR can handle (and remember) apart, since an edit leaves most of them as they were."""
        parts = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "listener"]
        parts += [getattr(self.listener, f.name) for f in dataclasses.fields(self.listener) if f.name != "routes"]
        return [*parts, *self.routes]

    @property
    def needs_policy_service(self) -> bool:
        """Whether some route sends some request to the policy service."""
        return any(r.decisions.needed for r in self.routes)

    @functools.cached_property
    def _user_naming_providers(self) -> tuple[str, ...]:
        named = {r.auth.provider for r in self.routes if r.auth is not None}
        named |= {g.user.provider for r in self.routes for g in r.grants if g.user is not None}
        agents_only = {p.provider for a in self.agents for p in a.principals if isinstance(p, JwtPrincipal)} - named
        rest = {p.name for p in self.identity.jwt_providers} - named - agents_only
        return (*sorted(named), *sorted(rest))

    def user_providers(self, route: RouteIR) -> tuple[str, ...]:
        """The JWT providers whose verified `sub` names the user an agent acts for on `route`, in the
        order they are tried (the first verified token with a string `sub` is the user's): the
        route's `auth` provider, then those a backend's `auth` or a rule's `users` names, then those
        no agent is identified by. A provider that only identifies agents never names the user.
        The same for the backend's user header, CEL's `user` (Envoy and the policy service) and
        quotas by user."""
        first = (route.auth.provider,) if route.auth is not None else ()
        return first + tuple(p for p in self._user_naming_providers if p not in first)


@dataclass(frozen=True)
class IR:
    """The whole resolved policy set."""

    gateways: tuple[GatewayIR, ...]  # sorted by name

    def gateway(self, name: str) -> GatewayIR | None:
        return next((g for g in self.gateways if g.name == name), None)


def to_plain(value: Any) -> Any:
    """`value` as plain dicts, lists, strings and numbers (for YAML).

    A dataclass that is one member of a union (it has a `KIND`) gets a `kind`
    key first; a `SecretIR` shows its value redacted.
    """
    if isinstance(value, SecretIR):
        return {"env": value.env, "file": value.file, "value": redacted(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = getattr(type(value), "KIND", None)
        body = {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"kind": kind, **body} if kind is not None else body
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value
