"""The intermediate representation: resolved, defaulted, sorted, serialisable.

The IR is what translators see; they never see policy models. Every value here
is already validated and defaulted by `ir.build`, every collection is a sorted
tuple, so the same policies always give the same IR (and the same xDS bytes).
`to_plain` turns any IR value into plain dicts/lists for YAML goldens and
`agentxds render --to ir`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any


class PatternKind(enum.StrEnum):
    """How a name pattern from a policy compiles to an Envoy string matcher."""

    EXACT = "exact"  # no wildcard
    PREFIX = "prefix"  # "get_*"
    SUFFIX = "suffix"  # "*_issue"
    REGEX = "regex"  # any other glob, compiled to an anchored RE2 regex
    ANY = "any"  # "*"


@dataclass(frozen=True, order=True)
class NamePattern:
    """A compiled glob over tool names, prompt names or resource URIs.

    `value` is the literal for EXACT/PREFIX/SUFFIX, the RE2 regex for REGEX,
    and empty for ANY. `glob` keeps what the user wrote, for messages.
    """

    kind: PatternKind
    value: str
    glob: str


@dataclass(frozen=True, order=True)
class HeaderPrincipal:
    """Identity asserted by a request header the gateway trusts (development only)."""

    header: str  # lower-case header name
    value: str


@dataclass(frozen=True, order=True)
class SpiffePrincipal:
    """Identity proven by an mTLS client certificate whose URI SAN is `spiffe_id`."""

    spiffe_id: str


@dataclass(frozen=True, order=True)
class JwtPrincipal:
    """Identity proven by a valid JWT from `provider` whose `claim` equals `value`."""

    provider: str
    claim: str
    value: str


@dataclass(frozen=True, order=True)
class ApiKeyPrincipal:
    """Identity proven by an API key in `header`. The key itself stays a reference
    (environment variable or absolute file path) until translation reads it."""

    header: str
    key_env: str | None
    key_file: str | None


Principal = HeaderPrincipal | SpiffePrincipal | JwtPrincipal | ApiKeyPrincipal


def principal_sort_key(principal: Principal) -> tuple[str, tuple[str, ...]]:
    """Principals of different kinds do not compare; sort them by kind, then fields."""
    return type(principal).__name__, tuple(str(v) for v in dataclasses.astuple(principal))


@dataclass(frozen=True, order=True)
class UserMatchIR:
    """The user an agent acts for, from a JWT of `provider`: every non-empty condition must hold."""

    provider: str
    subjects: tuple[str, ...]
    groups: tuple[str, ...]  # at least one of them in the token's `groups_claim`
    groups_claim: str
    claims: tuple[tuple[str, str], ...]  # exact claim values, sorted


@dataclass(frozen=True, order=True)
class AgentIR:
    """A named agent and every principal that proves it is that agent."""

    name: str
    principals: tuple[Principal, ...]


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


@dataclass(frozen=True, order=True)
class GrantIR:
    """What one agent may do on one backend: the union of its matching rules.

    `sources` names the rules that contributed ("policy-name/rules[2]") so a
    denial or an explain can say which rule set decided.
    """

    agent: str
    tools: tuple[NamePattern, ...]  # granted without conditions: decided by Envoy alone
    resources: tuple[NamePattern, ...]
    prompts: tuple[NamePattern, ...]
    sources: tuple[str, ...]
    conditional_tools: tuple[NamePattern, ...] = ()  # granted by conditional rules: Envoy, then the policy service
    user: UserMatchIR | None = None  # only when acting for such a user; None: whoever (if anyone) the user is
    argument_grants: tuple[ArgumentGrantIR, ...] = ()  # tools allowed only with matching arguments

    @property
    def listed_tools(self) -> tuple[NamePattern, ...]:
        """Tools the agent may call at all (some only with some arguments): what its lists show."""
        merged = set(self.all_tools) | {p for g in self.argument_grants for p in g.tools}
        anything = [p for p in merged if p.kind is PatternKind.ANY]
        return tuple(anything[:1]) if anything else tuple(sorted(merged))

    @property
    def all_tools(self) -> tuple[NamePattern, ...]:
        """Every tool the agent may call under some condition (what RBAC lets through)."""
        merged = set(self.tools) | set(self.conditional_tools)
        anything = [p for p in merged if p.kind is PatternKind.ANY]
        return tuple(anything[:1]) if anything else tuple(sorted(merged))


class QuotaScope(enum.StrEnum):
    """Whose calls a quota counts."""

    AGENT = "agent"  # per agent (all its users together)
    USER = "user"  # per user the agent acts for (all agents together)
    AGENT_USER = "agent+user"  # per (agent, user) pair


@dataclass(frozen=True, order=True)
class QuotaIR:
    """At most `calls` tool calls per `window_ms`, counted per tool and per `scope`."""

    calls: int
    window_ms: int
    scope: QuotaScope


@dataclass(frozen=True, order=True)
class ConditionalRuleIR:
    """A rule the policy service must check on each `tools/call` it covers.

    `id` is "policy-name/rules[i]" (stable across reloads while the rule keeps
    its place), `agents` the agent names it names ("*" already expanded),
    `tools` its tool patterns. `when` is a CEL expression over `args`,
    `agent`, `user` and `now`, already checked to compile; None means no
    condition. Native RBAC lets these tools through for these agents, then the
    policy service decides.
    """

    id: str
    agents: tuple[str, ...]
    tools: tuple[NamePattern, ...]
    when: str | None
    quota: QuotaIR | None
    require_approval: bool
    approval_ttl_ms: int
    user: UserMatchIR | None = None  # only when acting for such a user (checked by the policy service too)


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
class PolicyServiceUse:
    """How one backend uses the policy service."""

    fail_open: bool  # service down or slow: allow (True) or refuse (False, the default)
    timeout_ms: int
    list_filtering: bool  # tools/list, prompts/list, resources/list filtered per caller


@dataclass(frozen=True, order=True)
class EndpointIR:
    host: str
    port: int


@dataclass(frozen=True)
class BackendIR:
    """An MCP backend as the gateway serves it.

    `route_path` is the path clients use on the gateway; `upstream_path` the
    MCP endpoint path on the backend. `grants` is sorted by agent name and has
    at most one entry per agent; an agent without a grant has no access at all.
    """

    name: str
    route_path: str
    upstream_path: str
    endpoints: tuple[EndpointIR, ...]
    connect_timeout_ms: int
    request_timeout_ms: int  # 0 = no timeout (long-lived streams)
    idle_timeout_ms: int  # 0 = never; no bytes either way for this long closes the stream
    grants: tuple[GrantIR, ...]
    conditional_rules: tuple[ConditionalRuleIR, ...] = ()  # in policy order
    policy_service: PolicyServiceUse = PolicyServiceUse(fail_open=False, timeout_ms=250, list_filtering=False)
    tool_guard: ToolGuardIR | None = None
    auth: BackendAuthIR | None = None
    credentials: CredentialsIR | None = None
    upstream_tls: UpstreamTlsIR | None = None

    @property
    def needs_authz(self) -> bool:
        """Whether some request on this backend goes to the policy service (ext_authz)."""
        return bool(self.conditional_rules) or self.tool_guard is not None or self.credentials is not None

    @property
    def needs_list_processing(self) -> bool:
        """Whether list responses on this backend go to the policy service."""
        return self.policy_service.list_filtering or self.tool_guard is not None


@dataclass(frozen=True, order=True)
class JwtProviderIR:
    """A JWT issuer Envoy checks tokens of. Exactly one of the jwks_* fields is set."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    jwks_inline: str | None
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


@dataclass(frozen=True)
class DownstreamTlsIR:
    """TLS on the listener (absolute file paths; their contents go to Envoy over SDS)."""

    certificate_file: str
    private_key_file: str
    trust_bundle_file: str | None  # set: client certificates are asked for (mTLS)
    require_client_certificate: bool
    trust_domain: str | None


@dataclass(frozen=True)
class BackendAuthIR:
    """The MCP authorization spec on a backend: a user token from `provider` is required."""

    provider: str
    resource: str | None  # RFC 9728 `resource`; None: derived from the request's host and path
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class CredentialsIR:
    """What the backend receives instead of the caller's credentials (set by the policy service).

    kind "token_exchange": RFC 8693 at `token_endpoint` with the user's token as subject_token.
    kind "per_user_secrets": `format` with the user's secret from `secrets_file` in `header`.
    Secrets stay references (env name or absolute file path).
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
class UpstreamTlsIR:
    ca_file: str | None  # absolute; None: the system's roots
    sni: str | None
    certificate_file: str | None
    private_key_file: str | None


@dataclass(frozen=True)
class GatewayIR:
    """One gateway: one Envoy node group (`node.cluster` == `name`)."""

    name: str
    listen_address: str
    listen_port: int
    max_request_body_bytes: int
    connection_buffer_bytes: int
    identity: IdentityIR
    agents: tuple[AgentIR, ...]  # every agent known to this gateway, sorted by name
    backends: tuple[BackendIR, ...]  # sorted by name
    policy_service: EndpointIR | None = None  # where Envoy reaches the policy service
    ext_authz_http: EndpointIR | None = None  # ext_authz over HTTP/1.1 here; None: over gRPC at policy_service
    tls: DownstreamTlsIR | None = None


@dataclass(frozen=True)
class IR:
    """The whole resolved policy set."""

    gateways: tuple[GatewayIR, ...]  # sorted by name

    def gateway(self, name: str) -> GatewayIR | None:
        return next((g for g in self.gateways if g.name == name), None)


def to_plain(value: Any) -> Any:
    """Return `value` as plain dicts, lists, strings and numbers (for YAML)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value
