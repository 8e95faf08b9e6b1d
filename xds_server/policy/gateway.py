"""The Gateway kind: where Envoy listens, how callers are identified, limits, the policy service.

A Gateway is one Envoy node group (`node.cluster` = its name). Routed kinds
(MCPBackend today) name the gateway that serves them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    HEADER_NAME_PATTERN,
    MAX_BODY_BYTES,
    DocumentModel,
    Duration,
    Name,
    Port,
    StrictModel,
    _check_host,
    _check_ip,
    duration_ms,
)
from .identity import FilePath, GatewayTls, JwtProvider, SecretRef, UpstreamTls


class Listen(StrictModel):
    """Where the gateway's Envoy accepts client connections."""

    address: Annotated[str, AfterValidator(_check_ip)] = Field(
        default="127.0.0.1", description="IP address to listen on."
    )
    port: Port = Field(description="TCP port to listen on (1-65535).")


HeaderName = Annotated[str, Field(pattern=HEADER_NAME_PATTERN)]


class CallerHeaders(StrictModel):
    """Headers the gateway sets on every request it forwards, saying who called, as verified.

    Any copy a client sent is removed first, so a backend can log or authorise
    on them. `null` turns one off.
    """

    agent: HeaderName | None = Field(
        default="x-agentxds-agent", description="The verified agent's name (Agent metadata.name)."
    )
    user: HeaderName | None = Field(
        default="x-agentxds-user",
        description="The `sub` of the verified user token: the backend's `auth` provider first, then the "
        "other providers a rule's `users` or a backend's `auth` names, by name; absent when there is none.",
    )


class AnonymousCallers(StrictModel):
    """Callers that present no credential at all become one agent, so rules can grant them chosen tools.

    "No credential" means no trusted header, no API-key header, no
    `authorization` header, no JWT provider's token header and no client
    certificate. A caller that presents any of them and fails to prove an
    agent is refused (unknown agent, or the token's refusal), never treated as
    anonymous.
    """

    agent: Name = Field(
        description="The Agent callers with no credential become; it must have no identity sources of its own."
    )


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
    anonymous: AnonymousCallers | None = Field(
        default=None,
        description="Let callers with no credential in as one agent (off by default). Anyone who can reach "
        "the gateway gets what that agent is granted.",
    )
    caller_headers: CallerHeaders = Field(
        default_factory=CallerHeaders,
        description="Headers telling backends who called (verified by the gateway; client copies removed).",
    )

    @model_validator(mode="after")
    def _unique_providers(self) -> GatewayIdentity:
        names = [p.name for p in self.jwt_providers]
        if len(names) != len(set(names)):
            raise PydanticCustomError("duplicate_provider", "two jwtProviders have the same name")
        return self

    @model_validator(mode="after")
    def _caller_headers_are_not_credentials(self) -> GatewayIdentity:
        # The gateway removes the caller's credential headers and overwrites these:
        # one name in both roles would either leak a credential or lose the identity.
        credentials = {h.lower() for h in (self.trusted_header, self.api_key_header) if h}
        credentials |= {p.token_header.lower() for p in self.jwt_providers}
        set_by_gateway = [h.lower() for h in (self.caller_headers.agent, self.caller_headers.user) if h]
        for header in set_by_gateway:
            if header in credentials:
                raise PydanticCustomError(
                    "caller_header_is_credential",
                    "callerHeaders: {header} is also a header callers send credentials in; pick another name",
                    {"header": header, "at": "callerHeaders"},
                )
        if len(set(set_by_gateway)) != len(set_by_gateway):
            raise PydanticCustomError(
                "caller_headers_same", "callerHeaders: agent and user need different headers", {"at": "callerHeaders"}
            )
        # Envoy tells the policy service what it verified in headers of this prefix: a client's
        # header must never be able to pass for one.
        for header in [*credentials, *set_by_gateway]:
            if header.startswith(VERIFIED_PREFIX):
                raise PydanticCustomError(
                    "reserved_header",
                    "{header}: headers starting with " + VERIFIED_PREFIX + " are the gateway's own; pick another name",
                    {"header": header},
                )
        return self


#: The prefix of the headers Envoy adds to ext_authz checks (core/wire.py VERIFIED_*).
VERIFIED_PREFIX = "x-agentxds-verified-"


class Limits(StrictModel):
    """Size, time and connection limits of requests through the gateway (the Envoy process's own heap and
    connection limits are set where it starts: `agentxds up` / `agentxds bootstrap`)."""

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
    request_headers_timeout: Duration = Field(
        default="10s",
        description="A client must send a request's whole headers within this time, or its connection is "
        "closed (slowloris). 0s turns the limit off.",
    )
    request_receive_timeout: Duration = Field(
        default="30s",
        description="A client must send a whole request, headers and body, within this time (a body "
        "trickled byte by byte is cut off). Answers and SSE streams are not bounded by it. 0s turns it off.",
    )
    connection_idle_timeout: Duration = Field(
        default="60s",
        description="A client connection with no request in flight is closed after this long (an open SSE "
        "stream is a request in flight). 0s keeps idle connections open for ever.",
    )
    max_request_headers_kib: int = Field(
        default=60,
        ge=1,
        le=8192,
        description="Largest total size of a request's headers, in KiB (1-8192). Over it, HTTP/1 requests get "
        "HTTP 431 with JSON-RPC -32031; HTTP/2 streams are reset (Envoy's HTTP/2 codec cannot answer).",
    )
    max_headers: int = Field(
        default=100,
        ge=1,
        le=10000,
        description="Most headers a request may carry (1-10000); over it, as for maxRequestHeadersKib.",
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Most open client connections on this gateway's listener; further ones are closed as they "
        "are accepted. Unset: only the Envoy process's limit applies (`agentxds up --max-connections`).",
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

    @model_validator(mode="after")
    def _receive_covers_headers(self) -> Limits:
        # The whole request includes its headers: a shorter overall limit would always fire first,
        # and a reader of the policy would believe the headers limit applies.
        headers, whole = duration_ms(self.request_headers_timeout), duration_ms(self.request_receive_timeout)
        if headers and whole and whole < headers:
            raise PydanticCustomError(
                "limits_conflict",
                "requestReceiveTimeout ({whole}) is shorter than requestHeadersTimeout ({headers}): the whole "
                "request includes its headers, so the headers limit could never apply",
                {"whole": self.request_receive_timeout, "headers": self.request_headers_timeout,
                 "at": "requestReceiveTimeout"},
            )  # fmt: skip
        return self


class PolicyServiceTls(UpstreamTls):
    """TLS from Envoy to the policy service's decision ports (gRPC and HTTP; not the approvals port). The
    policy service serves them with `agentxds serve --policy-tls-cert/--policy-tls-key`, and asks for Envoy's
    client certificate with `--policy-tls-client-ca` (mTLS)."""

    ca_file: FilePath = Field(description="PEM CAs that sign the policy service's certificate.")
    sni: str | None = Field(
        default=None,
        description="Server name to send and verify: the certificate must carry it (DNS SAN, or IP SAN for an "
        "address). Default: `host`.",
    )
    certificate_file: FilePath | None = Field(
        default=None, description="Envoy's client certificate, for a policy service that asks for one (mTLS)."
    )


class PolicyServiceAddress(StrictModel):
    """Where this gateway's Envoys reach the agentxds policy service (ext_proc over gRPC; ext_authz
    over gRPC or HTTP)."""

    host: Annotated[str, AfterValidator(_check_host)] = Field(
        default="127.0.0.1", description="IP address or DNS name of the policy service."
    )
    port: Port = Field(default=18001, description="Its gRPC port (`agentxds serve --policy-port`, default 18001).")
    ext_authz: Literal["grpc", "http"] = Field(
        default="http",
        description="How Envoy asks for decisions: `http` (plain HTTP/1.1 on `extAuthzHttpPort`, the default: "
        "less latency and CPU per decision; carries every identity Envoy verified) or `grpc` "
        "(Authorization.Check on `port`).",
    )
    ext_authz_http_port: Port = Field(
        default=18003,
        description="Its HTTP ext_authz port (`agentxds serve --authz-http-port`, default 18003); "
        "used when extAuthz is http (the default).",
    )
    secret: SecretRef | None = Field(
        default=None,
        description="A secret (at least 32 characters, letters, digits and `-._~+/=`; e.g. from "
        "`openssl rand -hex 32`) Envoy sends with every request to the policy service, which refuses this "
        "gateway's requests without it: only Envoy can ask for decisions, delegated credentials or virtual "
        "servers' calls, whoever else reaches its decision ports (not the approvals port; without `tls` the hop "
        "is plain HTTP/gRPC: whoever reads that traffic reads the secret). Give every control-plane and "
        "policy-service replica the same one. Default: none (keep the ports reachable from Envoy only).",
    )
    tls: PolicyServiceTls | None = Field(
        default=None,
        description="TLS to the policy service (its certificate verified; Envoy's client certificate with "
        "mTLS), so that the decisions, the identities Envoy sends and the secret cannot be read or changed on "
        "the way. Default: plain HTTP/gRPC (keep the hop on loopback or a private network).",
    )
    previous_secret: SecretRef | None = Field(
        default=None,
        description="While `secret` is being changed across several control-plane and policy-service "
        "replicas (which reload at different moments): another secret the policy service accepts (Envoy sends "
        "only `secret`). Change in three edits: the new one here first (every replica learns it), then swap the "
        "two, then remove this. With one control plane, or if the old secret leaked, change `secret` alone.",
    )

    @model_validator(mode="after")
    def _previous_needs_current(self) -> PolicyServiceAddress:
        if self.previous_secret is not None and self.secret is None:
            raise PydanticCustomError("previous_secret", "previousSecret needs a secret (the one now in use)")
        return self


class Denials(StrictModel):
    """How the gateway answers a request its policies refuse (the caller is known or unknown, and may not)."""

    http_status: Literal[200, 403] = Field(
        default=200,
        description="HTTP status of a policy refusal's JSON-RPC error: 200 (default; clients read the error as a "
        "JSON-RPC answer) or 403 (some MCP clients then report it as an authentication problem). Missing or "
        "invalid tokens stay 401, quotas 429, limits 413, failures 5xx.",
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
    denials: Denials = Field(default_factory=Denials, description="How policy refusals are answered.")
    sealing_key: SecretRef | None = Field(
        default=None,
        description="The key (at least 32 bytes, e.g. from `openssl rand -hex 32`) the policy service seals "
        "what the gateway hands to clients with (task ids of backends with tasks). Default: a key the policy "
        "service keeps in its state directory; give every policy-service replica of the gateway the same one.",
    )


class Gateway(DocumentModel):
    """A gateway that MCP backends are served on."""

    kind: Literal["Gateway"] = Field(description="Document kind.")
    spec: GatewaySpec = Field(description="Gateway settings.")
