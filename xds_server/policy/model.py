"""The policy document models (apiVersion agentxds.dev/v1).

Every model is strict: frozen, unknown fields rejected, every field documented
(the descriptions become editor help through `policies/schema.json`). YAML
uses camelCase keys; Python code uses the snake_case field names. The loader
validates by alias only, so a policy file cannot spell a key in snake_case.

Models check what a single document can check on its own. Anything that needs
several documents (references, duplicates, conflicts) lives in `checks.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import (  # noqa: F401  (re-exported: other modules import them from here)
    AGENT_REF_PATTERN,
    API_VERSION,
    DURATION_PATTERN,
    GLOB_PATTERN,
    HEADER_NAME_PATTERN,
    HTTP_PATH_PATTERN,
    MAX_BODY_BYTES,
    NAME_PATTERN,
    PATTERN_HINTS,
    Duration,
    Glob,
    HttpPath,
    Metadata,
    Name,
    Port,
    StrictModel,
    _check_duration,
    _check_header_value,
    _check_host,
    _check_ip,
    duration_ms,
)
from .diagnostics import Diagnostic, Path, join_field, subject
from .identity import (
    ApiKeyIdentity,
    BackendAuth,
    BackendCredentials,
    GatewayTls,
    JwtAgentIdentity,
    JwtProvider,
    SpiffeId,
    UpstreamTls,
)

# ---------------------------------------------------------------- Gateway


class Listen(StrictModel):
    """Where the gateway's Envoy accepts client connections."""

    address: Annotated[str, AfterValidator(_check_ip)] = Field(
        default="127.0.0.1", description="IP address to listen on."
    )
    port: Port = Field(description="TCP port to listen on (1-65535).")


class GatewayIdentity(StrictModel):
    """How the gateway learns who the calling agent (and the user behind it) is."""

    trusted_header: Annotated[str, Field(pattern=HEADER_NAME_PATTERN)] | None = Field(
        default=None,
        description="DEVELOPMENT ONLY: take the caller's identity from this request header, "
        "as sent by the client. Anyone who can reach the gateway can claim any agent.",
    )
    jwt_providers: tuple[JwtProvider, ...] = Field(
        default=(), description="JWT issuers whose tokens identify agents or the users they act for."
    )
    api_key_header: Annotated[str, Field(pattern=HEADER_NAME_PATTERN)] = Field(
        default="x-api-key", description="Header carrying an agent's API key (agents with identity.apiKey)."
    )

    @model_validator(mode="after")
    def _unique_providers(self) -> GatewayIdentity:
        names = [p.name for p in self.jwt_providers]
        if len(names) != len(set(names)):
            raise PydanticCustomError("duplicate_provider", "two jwtProviders have the same name")
        return self


class Limits(StrictModel):
    """Buffer limits for requests through the gateway."""

    max_request_body_bytes: int = Field(
        default=65536,
        ge=1,
        le=MAX_BODY_BYTES,
        description="Largest JSON-RPC request body the MCP filter parses (1-10485760).",
    )
    connection_buffer_bytes: int = Field(
        default=1048576,
        ge=1,
        le=2**32 - 1,
        description="Per-connection buffer limit; must be at least maxRequestBodyBytes.",
    )

    @model_validator(mode="after")
    def _buffer_holds_body(self) -> Limits:
        # A body larger than the connection buffer could never be parsed whole.
        # ctx["at"] tells the loader which field to blame.
        if self.connection_buffer_bytes < self.max_request_body_bytes:
            raise PydanticCustomError(
                "limits_conflict",
                "maxRequestBodyBytes ({body}) exceeds connectionBufferBytes ({buffer})",
                {
                    "body": self.max_request_body_bytes,
                    "buffer": self.connection_buffer_bytes,
                    "at": "maxRequestBodyBytes",
                },
            )
        return self


class PolicyServiceAddress(StrictModel):
    """Where this gateway's Envoys reach the agentxds policy service (ext_proc over gRPC; ext_authz
    over gRPC or HTTP)."""

    host: Annotated[str, AfterValidator(_check_host)] = Field(
        default="127.0.0.1", description="IP address or DNS name of the policy service."
    )
    port: Port = Field(default=18001, description="Its gRPC port (`agentxds serve --policy-port`, default 18001).")
    ext_authz: Literal["grpc", "http"] = Field(
        default="grpc",
        description="How Envoy asks for decisions: `grpc` (Authorization.Check on `port`), or `http` "
        "(plain HTTP/1.1 on `extAuthzHttpPort`: less latency per decision, for gateways whose agents "
        "are identified by header or API key).",
    )
    ext_authz_http_port: Port = Field(
        default=18003,
        description="Its HTTP ext_authz port (`agentxds serve --authz-http-port`, default 18003); "
        "used when extAuthz is http.",
    )


class GatewaySpec(StrictModel):
    """One gateway: one Envoy (or group of identical Envoys)."""

    listen: Listen = Field(description="Listener address and port.")
    identity: GatewayIdentity = Field(default_factory=GatewayIdentity, description="Caller identity sources.")
    limits: Limits = Field(default_factory=Limits, description="Request and buffer size limits.")
    tls: GatewayTls | None = Field(default=None, description="TLS (and mTLS with SPIFFE IDs) on the listener.")
    policy_service: PolicyServiceAddress = Field(
        default_factory=PolicyServiceAddress,
        description="The policy service, used only by backends whose rules or settings need it.",
    )

    @model_validator(mode="after")
    def _http_authz_identity(self) -> GatewaySpec:
        # Over HTTP, Envoy sends the policy service headers and the body only:
        # no verified JWT payloads and no client certificate. Refuse rather than
        # decide without the identity the gateway was told to use.
        if self.policy_service.ext_authz != "http":
            return self
        if self.identity.jwt_providers or (self.tls is not None and self.tls.client_certificates is not None):
            raise PydanticCustomError(
                "ext_authz_http_identity",
                "policyService.extAuthz http carries no JWT claims or client certificates to the policy "
                "service: use extAuthz grpc on a gateway with identity.jwtProviders or tls.clientCertificates",
                {"at": "policyService.extAuthz"},
            )
        return self


class Gateway(StrictModel):
    """A gateway that MCP backends are served on."""

    api_version: Literal["agentxds.dev/v1"] = Field(description="Always agentxds.dev/v1.")
    kind: Literal["Gateway"] = Field(description="Document kind.")
    metadata: Metadata = Field(description="Name, labels and annotations.")
    spec: GatewaySpec = Field(description="Gateway settings.")


# ---------------------------------------------------------------- MCPBackend


class Endpoint(StrictModel):
    """One upstream address of an MCP server."""

    host: Annotated[str, AfterValidator(_check_host)] = Field(description="IP address or DNS name.")
    port: Port = Field(description="TCP port (1-65535).")


class Timeouts(StrictModel):
    """Upstream timeouts."""

    connect: Duration = Field(default="5s", description="TCP connect timeout, e.g. 5s; must be above 0.")
    request: Duration = Field(
        default="0s", description="Whole-request timeout; 0s (default) means none, as MCP streams are long-lived."
    )
    idle: Duration = Field(
        default="300s",
        description="Close a request or SSE stream after this long with no bytes either way; 0s means never. "
        "Clients reopen idle SSE streams; raise it for tools that run silently for longer.",
    )

    @model_validator(mode="after")
    def _connect_positive(self) -> Timeouts:
        if duration_ms(self.connect) == 0:
            raise PydanticCustomError("timeout_zero", "connect timeout must be above 0", {"at": "connect"})
        return self

    @property
    def connect_ms(self) -> int:
        return duration_ms(self.connect)

    @property
    def request_ms(self) -> int:
        return duration_ms(self.request)

    @property
    def idle_ms(self) -> int:
        return duration_ms(self.idle)


class BackendPolicyService(StrictModel):
    """How one backend uses the policy service."""

    fail_open: bool = Field(
        default=False,
        description="When the policy service is down or slow: false (default) refuses the calls that need it; "
        "true lets them through unchecked.",
    )
    timeout: Duration = Field(default="250ms", description="How long Envoy waits for a policy decision.")
    list_filtering: bool = Field(
        default=True,
        description="Filter tools/list, prompts/list and resources/list per caller, so each agent sees only "
        "what it may use (the policy service rewrites the responses).",
    )

    @property
    def timeout_ms(self) -> int:
        return duration_ms(self.timeout)


class ToolGuard(StrictModel):
    """Rug-pull defences. Active when the backend has an MCPToolLock or screening is not off."""

    screening: Literal["off", "flag", "block"] = Field(
        default="off",
        description="Screen tool descriptions for prompt injection (hidden instructions, invisible Unicode, "
        "instruction-like tags): flag logs it, block hides and refuses the tool.",
    )
    unpinned: Literal["hide", "allow"] = Field(
        default="hide", description="With an MCPToolLock: what to do with a tool the lock does not list."
    )
    refresh: Duration = Field(default="30s", description="How often the policy service re-reads the backend's tools.")

    @property
    def refresh_ms(self) -> int:
        return duration_ms(self.refresh)


class MCPBackendSpec(StrictModel):
    """An MCP server reachable through a gateway."""

    gateway: Name | None = Field(
        default=None, description="Gateway serving this backend; optional when exactly one Gateway exists."
    )
    route: HttpPath | None = Field(
        default=None, description='Path clients use on the gateway; default "/mcp/<backend name>".'
    )
    path: HttpPath = Field(default="/mcp", description="MCP endpoint path on the backend.")
    endpoints: tuple[Endpoint, ...] = Field(
        min_length=1, max_length=64, description="Upstream addresses (1-64), load balanced."
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Connect and request timeouts to the backend.")
    policy_service: BackendPolicyService = Field(
        default_factory=BackendPolicyService,
        description="How this backend uses the policy service (conditions, quotas, approvals, list filtering).",
    )
    auth: BackendAuth | None = Field(
        default=None,
        description="Require a user token from a JWT provider (MCP authorization spec: 401 with "
        "WWW-Authenticate and a protected-resource metadata document).",
    )
    credentials: BackendCredentials | None = Field(
        default=None,
        description="What the backend receives instead of the caller's credentials (needs `auth`): "
        "a token exchanged for the user's, or the user's stored secret.",
    )
    tls: UpstreamTls | None = Field(default=None, description="TLS to the backend.")
    tool_guard: ToolGuard = Field(
        default_factory=ToolGuard,
        description="Defences against the backend changing its tools: pinning (MCPToolLock) and description screening.",
    )

    @model_validator(mode="after")
    def _credentials_need_a_user(self) -> MCPBackendSpec:
        if self.credentials is not None and self.auth is None:
            raise PydanticCustomError(
                "credentials_without_auth",
                "credentials are issued for the user the agent acts for: set `auth` (a user token provider) too",
            )
        if self.credentials is not None and self.policy_service.fail_open:
            # Failing open would send requests on without the backend's credential
            # (and with the user's own token): refuse the combination.
            raise PydanticCustomError(
                "credentials_fail_open",
                "a backend with credentials must fail closed: remove policyService.failOpen",
            )
        return self


class MCPBackend(StrictModel):
    """An MCP server the gateway routes to."""

    api_version: Literal["agentxds.dev/v1"] = Field(description="Always agentxds.dev/v1.")
    kind: Literal["MCPBackend"] = Field(description="Document kind.")
    metadata: Metadata = Field(description="Name, labels and annotations.")
    spec: MCPBackendSpec = Field(description="Backend settings.")

    @property
    def route_path(self) -> str:
        """The gateway path for this backend, with the default applied."""
        return self.spec.route or f"/mcp/{self.metadata.name}"


# ---------------------------------------------------------------- Agent


class AgentIdentity(StrictModel):
    """How an agent proves who it is; at least one source must be set. Any one of them suffices."""

    header: Annotated[str, AfterValidator(_check_header_value)] | None = Field(
        default=None,
        description="DEVELOPMENT ONLY: value of the gateway's trusted identity header that names this agent.",
    )
    spiffe: SpiffeId | None = Field(
        default=None, description="SPIFFE ID in the URI SAN of the agent's client certificate (mTLS)."
    )
    jwt: JwtAgentIdentity | None = Field(default=None, description="A JWT claim that names the agent.")
    api_key: ApiKeyIdentity | None = Field(default=None, description="An API key (kept out of the policy).")

    @model_validator(mode="after")
    def _some_source(self) -> AgentIdentity:
        if self.header is None and self.spiffe is None and self.jwt is None and self.api_key is None:
            raise PydanticCustomError(
                "identity_empty", "an agent identity needs at least one source (header, spiffe, jwt, apiKey)"
            )
        return self


class AgentSpec(StrictModel):
    """An agent: a caller the gateway can identify."""

    description: str | None = Field(default=None, description="Free text for humans.")
    identity: AgentIdentity = Field(description="How the gateway recognises this agent.")


class Agent(StrictModel):
    """A calling agent, named in MCPPolicy rules."""

    api_version: Literal["agentxds.dev/v1"] = Field(description="Always agentxds.dev/v1.")
    kind: Literal["Agent"] = Field(description="Document kind.")
    metadata: Metadata = Field(description="Name, labels and annotations.")
    spec: AgentSpec = Field(description="Agent settings.")


# MCPPolicy and its rules live in rules.py (re-exported here).
from .rules import (  # noqa: E402,F401
    ArgumentMatch,
    MCPPolicy,
    MCPPolicySpec,
    Quota,
    Rule,
)

# ---------------------------------------------------------------- MCPToolLock

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class PinnedTool(StrictModel):
    """One tool as `agentxds pin` saw it."""

    name: str = Field(min_length=1, description="Tool name.")
    description_sha256: Sha256 = Field(description="sha256 (hex) of the tool's description.")
    input_schema_sha256: Sha256 = Field(description="sha256 (hex) of the tool's inputSchema as canonical JSON.")


class MCPToolLockSpec(StrictModel):
    """The pinned tools of one backend. Written by `agentxds pin`; kept in Git."""

    backend: Name = Field(description="The MCPBackend whose tools are pinned.")
    tools: tuple[PinnedTool, ...] = Field(description="Pinned tools, sorted by name.")


class MCPToolLock(StrictModel):
    """Pins a backend's tools: a pinned tool that changes is hidden and refused until the lock is updated."""

    api_version: Literal["agentxds.dev/v1"] = Field(description="Always agentxds.dev/v1.")
    kind: Literal["MCPToolLock"] = Field(description="Document kind.")
    metadata: Metadata = Field(description="Name, labels and annotations.")
    spec: MCPToolLockSpec = Field(description="The pinned tools.")


Document = Annotated[Gateway | MCPBackend | Agent | MCPPolicy | MCPToolLock, Field(discriminator="kind")]
KINDS: Mapping[str, type[StrictModel]] = {
    "Gateway": Gateway,
    "MCPBackend": MCPBackend,
    "Agent": Agent,
    "MCPPolicy": MCPPolicy,
    "MCPToolLock": MCPToolLock,
}

# ---------------------------------------------------------------- locations

T = TypeVar("T", Gateway, MCPBackend, Agent, MCPPolicy, MCPToolLock)


@dataclass(frozen=True, order=True)
class Source:
    """Where something was written: file as the user gave it, 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Located(Generic[T]):
    """A validated document and where it came from.

    `lines` maps YAML paths inside the document (camelCase keys and list
    indices, e.g. ("spec", "rules", 0, "tools")) to 1-based lines, so later
    stages can point their own diagnostics at the field they reject.
    """

    doc: T
    source: Source
    lines: Mapping[Path, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def name(self) -> str:
        return self.doc.metadata.name

    def line_of(self, path: Path) -> int:
        """Line of `path`, or of its closest enclosing node that was written."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return self.source.line

    def diagnostic(self, path: Path, message: str) -> Diagnostic:
        """A diagnostic about `path` in this document."""
        return Diagnostic(
            self.source.file, self.line_of(path), join_field(subject(self.doc.kind, self.name), path), message
        )
