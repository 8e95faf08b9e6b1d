"""The MCP authorization spec for backends with `auth`: protected-resource metadata and the 401 challenge.

An MCP server that requires authorization (here: the gateway, for a backend
with `auth`) is an OAuth 2.1 resource server. Clients discover where to get a
token from two things this module describes (Envoy serves both natively):

- The RFC 9728 protected-resource metadata document, at the well-known URL
  made by inserting `/.well-known/oauth-protected-resource` between the host
  and the path of the resource: `https://gw/mcp/github` →
  `https://gw/.well-known/oauth-protected-resource/mcp/github`. It is a
  `direct_response` route whose body a local-reply mapper fills in, because
  the `resource` (when not configured) is derived from the request's scheme
  and host. MCP lets clients fall back to the root
  `/.well-known/oauth-protected-resource` for path-bearing endpoints; it is
  served only when exactly one backend of the gateway has `auth`, where it
  cannot be ambiguous.
- The `WWW-Authenticate: Bearer resource_metadata="<that URL>"` challenge on
  the 401 answering a request without a token (RFC 9728 §5.1, RFC 6750 §3),
  with `scope` when the backend lists scopes and `error="invalid_token"` when
  a token was sent but refused.

The documents need no token, and no RBAC or policy decision: the routes
switch those filters (and the MCP filter, which would refuse a plain GET) off.
Strings returned here are Envoy format strings (`%REQ(...)%` commands and
`%%` for a literal percent sign).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from xds_server.core.wire import literal
from xds_server.ir.types import GatewayIR, JwtProviderIR, RouteIR

WELL_KNOWN = "/.well-known/oauth-protected-resource"
REQUEST_ORIGIN = "%REQ(:scheme)%://%REQ(:authority)%"


def auth_backends(gateway: GatewayIR) -> list[RouteIR]:
    """The routes that require a user token."""
    return [r for r in gateway.routes if r.auth is not None]


def metadata_route_name(backend: RouteIR) -> str:
    """Route name of the backend's metadata document (backend names hold no '/', so it is unique)."""
    return f"{backend.name}/oauth-protected-resource"


def _inserted(path: str) -> str:
    """RFC 9728 §3.1: the well-known path for a resource with path `path` (a terminating '/' dropped)."""
    path = path.rstrip("/")
    return WELL_KNOWN + path


def document_paths(gateway: GatewayIR, backend: RouteIR) -> list[str]:
    """Gateway paths serving `backend`'s metadata document."""
    assert backend.auth is not None
    paths = {_inserted(backend.path)}
    if backend.auth.resource is not None:
        # Clients build the URL from the configured resource; serve it there too.
        paths.add(_inserted(urlsplit(backend.auth.resource).path))
    if len(auth_backends(gateway)) == 1:
        paths.add(WELL_KNOWN)
    return sorted(paths)


def resource(backend: RouteIR) -> str:
    """The RFC 9728 `resource` (format string): configured, or this request's origin + the route path."""
    assert backend.auth is not None
    if backend.auth.resource is not None:
        return literal(backend.auth.resource)
    return REQUEST_ORIGIN + literal(backend.path)


def metadata_url(backend: RouteIR) -> str:
    """Absolute URL of the metadata document (format string), for `resource_metadata`."""
    assert backend.auth is not None
    if backend.auth.resource is not None:
        url = urlsplit(backend.auth.resource)
        return literal(f"{url.scheme}://{url.netloc}{_inserted(url.path)}")
    return REQUEST_ORIGIN + literal(_inserted(backend.path))


def provider_of(gateway: GatewayIR, backend: RouteIR) -> JwtProviderIR | None:
    assert backend.auth is not None
    return next((p for p in gateway.identity.jwt_providers if p.name == backend.auth.provider), None)


def document(gateway: GatewayIR, backend: RouteIR) -> dict[str, Any]:
    """The protected-resource metadata document (a JSON object of format strings)."""
    assert backend.auth is not None
    provider = provider_of(gateway, backend)
    body: dict[str, Any] = {
        "resource": resource(backend),
        # The provider's issuer is the authorization server clients get tokens from.
        "authorization_servers": [literal(provider.issuer)] if provider is not None else [],
        "bearer_methods_supported": ["header"],
    }
    if backend.auth.scopes:
        body["scopes_supported"] = [literal(s) for s in backend.auth.scopes]
    return body


def challenge(backend: RouteIR, *, invalid_token: bool) -> str:
    """The `WWW-Authenticate` value (format string) for a 401 on `backend`.

    RFC 6750 §3.1: no error code when the request carried no token,
    `invalid_token` when the token was refused.
    """
    assert backend.auth is not None
    params = []
    if invalid_token:
        params.append('error="invalid_token"')
    params.append(f'resource_metadata="{metadata_url(backend)}"')
    if backend.auth.scopes:
        params.append(f'scope="{literal(" ".join(backend.auth.scopes))}"')
    return "Bearer " + ", ".join(params)
