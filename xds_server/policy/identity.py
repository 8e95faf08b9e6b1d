"""Identity in policies: gateway TLS, JWT providers, how agents and users are recognised,
and what credentials a backend receives.

File paths in these models are relative to the policy directory (or absolute);
the loader checks nothing on disk, the pipeline reads the files when it builds
the configuration (so a rotated certificate is picked up on the next build).
Secrets (client secrets, API keys) are never written in policies: they are
references to an environment variable or a file.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .base import (
    HEADER_NAME_PATTERN,
    SPIFFE_ID_PATTERN,
    TRUST_DOMAIN_PATTERN,
    Duration,
    Name,
    StrictModel,
    duration_ms,
)

FilePath = Annotated[str, Field(min_length=1, pattern=r"^[^\x00-\x1f\x7f]+$")]


def _check_https_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    url = urlsplit(value)
    try:
        url.port  # noqa: B018 (raises for a port that is not a number in 0-65535)
    except ValueError:
        raise ValueError(f"{value!r} has a bad port") from None
    if not url.hostname:
        raise ValueError(f"{value!r} names no host")
    return value


Url = Annotated[str, AfterValidator(_check_https_url)]


class SecretRef(StrictModel):
    """A secret kept out of the policy repository: exactly one of `env` or `file`."""

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = Field(
        default=None, description="Name of an environment variable of the control plane holding the secret."
    )
    file: FilePath | None = Field(
        default=None, description="File holding the secret (surrounding whitespace is dropped)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise PydanticCustomError("secret_ref", "give exactly one of env or file")
        return self


# ---------------------------------------------------------------- gateway


class ClientCertificates(StrictModel):
    """mTLS: agents present certificates whose URI SAN is a SPIFFE ID."""

    required: bool = Field(
        default=True, description="Refuse the TLS handshake of a client without a certificate (default true)."
    )
    trust_bundle_file: FilePath = Field(description="PEM bundle of the CAs that sign agent certificates.")
    trust_domain: Annotated[str, Field(pattern=TRUST_DOMAIN_PATTERN)] = Field(
        description="SPIFFE trust domain: only spiffe://<trustDomain>/... identities are accepted."
    )


class GatewayTls(StrictModel):
    """TLS on the gateway's listener; certificates go to Envoy over SDS and rotate without restarts."""

    certificate_file: FilePath = Field(description="PEM certificate chain of the gateway.")
    private_key_file: FilePath = Field(description="PEM private key of the gateway.")
    client_certificates: ClientCertificates | None = Field(
        default=None, description="Ask for client certificates (mTLS with SPIFFE IDs)."
    )


class Jwks(StrictModel):
    """Where a JWT provider's signing keys are: exactly one of inline, file, url."""

    inline: str | None = Field(default=None, description="The JWKS document itself (JSON).")
    file: FilePath | None = Field(default=None, description="A file holding the JWKS document.")
    url: Url | None = Field(default=None, description="Fetched by Envoy and cached for `cacheDuration`.")
    cache_duration: Duration = Field(default="10m", description="How long a fetched JWKS is cached (url only).")

    @model_validator(mode="after")
    def _exactly_one(self) -> Jwks:
        if sum(x is not None for x in (self.inline, self.file, self.url)) != 1:
            raise PydanticCustomError("jwks_source", "give exactly one of inline, file or url")
        return self

    @property
    def cache_ms(self) -> int:
        return duration_ms(self.cache_duration)


class JwtProvider(StrictModel):
    """A JWT issuer whose tokens the gateway checks (signature, expiry, issuer, audience)."""

    name: Name = Field(description="Name used by agents' and rules' `provider`.")
    issuer: str = Field(min_length=1, description="Required `iss` claim.")
    audiences: tuple[str, ...] = Field(default=(), description="Accepted `aud` values; empty accepts any.")
    jwks: Jwks = Field(description="The provider's signing keys.")
    token_header: Annotated[str, Field(pattern=HEADER_NAME_PATTERN)] = Field(
        default="authorization", description="Header carrying the token ('Bearer ' prefix for authorization)."
    )
    groups_claim: str = Field(
        default="groups", description="Claim listing the user's groups (for rules' `users.groups`)."
    )


# ---------------------------------------------------------------- agents and users


class JwtAgentIdentity(StrictModel):
    """An agent proven by a JWT from `provider` whose `claim` equals `value` (default: `sub`)."""

    provider: Name = Field(description="A JwtProvider of the gateway.")
    claim: str = Field(default="sub", description="Claim that names the agent.")
    value: str = Field(min_length=1, description="Its value for this agent.")


class ApiKeyIdentity(StrictModel):
    """An agent proven by an API key sent in the gateway's `apiKeyHeader`."""

    key: SecretRef = Field(description="Where the key is (env or file); never written in the policy.")


class UserMatch(StrictModel):
    """Which users (from a JWT) a rule applies to; every given condition must hold."""

    provider: Name = Field(description="The JwtProvider whose token names the user.")
    subjects: tuple[str, ...] = Field(default=(), description="Allowed `sub` values (any if empty).")
    groups: tuple[str, ...] = Field(default=(), description="The user is in at least one of these groups.")
    claims: dict[str, str] = Field(default_factory=dict, description="Exact values of other claims.")


# ---------------------------------------------------------------- backends


class TokenExchange(StrictModel):
    """OAuth 2.0 Token Exchange (RFC 8693): swap the user's token for one the backend accepts."""

    token_endpoint: Url = Field(description="The authorization server's token endpoint.")
    client_id: str = Field(min_length=1, description="The gateway's client id there.")
    client_secret: SecretRef = Field(description="The gateway's client secret (env or file).")
    audience: str | None = Field(default=None, description="`audience` of the requested token.")
    scope: str | None = Field(default=None, description="`scope` of the requested token.")


class PerUserSecrets(StrictModel):
    """A credential per user, looked up by the user's `sub` in a YAML/JSON file {sub: secret}."""

    file: FilePath = Field(description="The file mapping user subjects to secrets.")
    header: Annotated[str, Field(pattern=HEADER_NAME_PATTERN)] = Field(
        default="authorization", description="Header the backend receives."
    )
    format: str = Field(default="Bearer {secret}", description="Header value; {secret} is replaced.")


class BackendCredentials(StrictModel):
    """What the backend receives instead of the caller's credentials (exactly one way)."""

    token_exchange: TokenExchange | None = Field(default=None, description="RFC 8693 token exchange.")
    per_user_secrets: PerUserSecrets | None = Field(default=None, description="A stored secret per user.")

    @model_validator(mode="after")
    def _exactly_one(self) -> BackendCredentials:
        if (self.token_exchange is None) == (self.per_user_secrets is None):
            raise PydanticCustomError("credentials", "give exactly one of tokenExchange or perUserSecrets")
        return self


class BackendAuth(StrictModel):
    """The MCP authorization spec for this backend: a user token is required."""

    provider: Name = Field(description="The JwtProvider whose tokens are required.")
    resource: str | None = Field(
        default=None, description="Canonical URI of this MCP server (RFC 9728 `resource`); default from the request."
    )
    scopes: tuple[str, ...] = Field(default=(), description="`scopes_supported` in the metadata document.")


class UpstreamTls(StrictModel):
    """TLS from the gateway to the backend."""

    ca_file: FilePath | None = Field(
        default=None, description="PEM CAs to verify the backend (system roots if omitted)."
    )
    sni: str | None = Field(default=None, description="Server name to send and verify (default: the endpoint host).")
    certificate_file: FilePath | None = Field(default=None, description="Client certificate for the backend (mTLS).")
    private_key_file: FilePath | None = Field(default=None, description="Its private key.")

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTls:
        if (self.certificate_file is None) != (self.private_key_file is None):
            raise PydanticCustomError("tls_pair", "give both certificateFile and privateKeyFile, or neither")
        return self


SpiffeId = Annotated[str, Field(pattern=SPIFFE_ID_PATTERN)]
