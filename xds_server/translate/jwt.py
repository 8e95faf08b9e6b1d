"""JWT validation (envoy.filters.http.jwt_authn) for agent and user tokens.

One Envoy provider per `JwtProviderIR`: issuer, audiences, signing keys, the
header the token comes in, its verified payload put in metadata under the
provider's name (RBAC principals and the policy service read it there), and
the token forwarded (delegated credentials need the user's own token).

Keys: the JWKS document in the IR (written inline, or read from its file when
the IR was built, so a rotated file takes effect on the next build); or a
JWKS URL fetched and cached by Envoy through a cluster of its own
(`jwks_clusters`).

Requirements, per route (`PerRouteConfig.requirement_name`):

- `optional` (every backend route): a token is checked only when one is
  sent. A missing token passes (RBAC then decides, usually by denying); a
  token that is present but invalid (expired, bad signature, unknown issuer,
  audience not accepted) is refused by jwt_authn itself.
- `user/<provider>` (the routes with `auth`): the same, except that a valid
  token of the route's provider is required; a missing one is answered 401
  with the OAuth challenge (see `oauth.py`).

Providers that read the same header share one `requires_any`, so a token of
either is accepted there; each header is checked on its own (`requires_all`
over headers), so an agent token and a user token can travel side by side.
The gateway's own routes (no-backend, metadata documents) switch the filter off.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

# Registers the message types used below in the descriptor pool (for `typed`).
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as _jwt_authn_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as _tls_pb2  # noqa: F401

from xds_server.core.wire import JWT_METADATA_NAMESPACE, typed
from xds_server.ir.types import EndpointIR, GatewayIR, JwtProviderIR, RouteIR
from xds_server.translate.cluster import SYSTEM_CA_BUNDLE, UPSTREAM_TLS_TYPE, is_ip, load_assignment, san_matcher
from xds_server.translate.filters import FilterUses, HttpFilter, Slot, Use
from xds_server.translate.proto import to_message

JWT_FILTER = JWT_METADATA_NAMESPACE  # the filter's name is also its metadata namespace
JWT_TYPE = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
JWT_PER_ROUTE_TYPE = "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
OPTIONAL_REQUIREMENT = "optional"
JWKS_FETCH_TIMEOUT = "5s"


def user_requirement_name(provider: str) -> str:
    return f"user/{provider}"


def jwks_cluster_name(provider: str) -> str:
    return f"jwks/{provider}"


# ---------------------------------------------------------------- keys


def _jwks(provider: JwtProviderIR) -> dict[str, Any]:
    if provider.jwks_url is not None:
        return {
            "remote_jwks": {
                "http_uri": {
                    "uri": provider.jwks_url,
                    "cluster": jwks_cluster_name(provider.name),
                    "timeout": JWKS_FETCH_TIMEOUT,
                },
                "cache_duration": f"{provider.jwks_cache_ms / 1000:.3f}s",
                # Fetch in the background (and again after a failure): the
                # listener does not wait for the issuer, and a slow issuer
                # never delays the first request.
                "async_fetch": {"fast_listener": True},
            }
        }
    assert provider.jwks is not None  # written inline or read from its file, checked when the IR was built
    return {"local_jwks": {"inline_string": provider.jwks}}


def _token_sources(provider: JwtProviderIR) -> list[dict[str, Any]]:
    if provider.token_header == "authorization":
        return [{"name": "authorization", "value_prefix": "Bearer "}]
    return [{"name": provider.token_header}]


def provider_config(provider: JwtProviderIR) -> dict[str, Any]:
    """One jwt_authn `JwtProvider`."""
    config: dict[str, Any] = {
        "issuer": provider.issuer,
        **_jwks(provider),
        # Only this header: with `from_headers` set, Envoy does not also look
        # at the `access_token` query parameter (MCP forbids tokens in URIs).
        "from_headers": _token_sources(provider),
        "payload_in_metadata": provider.name,
        "forward": True,
        # A token that never expires is a credential that can never be revoked.
        "require_expiration": True,
    }
    if provider.audiences:
        config["audiences"] = list(provider.audiences)
    return config


# ---------------------------------------------------------------- requirements


def _by_header(providers: tuple[JwtProviderIR, ...]) -> list[list[JwtProviderIR]]:
    groups: dict[str, list[JwtProviderIR]] = defaultdict(list)
    for provider in providers:
        groups[provider.token_header].append(provider)
    return [sorted(groups[h], key=lambda p: p.name) for h in sorted(groups)]


def _optional(group: list[JwtProviderIR]) -> dict[str, Any]:
    """A valid token of any provider of the group, or none at all (an invalid one is refused)."""
    return {"requires_any": {"requirements": [{"provider_name": p.name} for p in group] + [{"allow_missing": {}}]}}


def _all(requirements: list[dict[str, Any]]) -> dict[str, Any]:
    return requirements[0] if len(requirements) == 1 else {"requires_all": {"requirements": requirements}}


def auth_providers(gateway: GatewayIR) -> list[str]:
    """The providers whose tokens some route of `gateway` requires (each one of the gateway's)."""
    return sorted({r.auth.provider for r in gateway.routes if r.auth is not None})


def requirement_map(gateway: GatewayIR) -> dict[str, Any]:
    groups = _by_header(gateway.identity.jwt_providers)
    requirements = {OPTIONAL_REQUIREMENT: _all([_optional(g) for g in groups])}
    for required in auth_providers(gateway):
        requirements[user_requirement_name(required)] = _all(
            [{"provider_name": required} if any(p.name == required for p in g) else _optional(g) for g in groups]
        )
    return requirements


def jwt_authn_filter(gateway: GatewayIR) -> HttpFilter | None:
    """The jwt_authn HTTP filter, or None when the gateway has no JWT providers."""
    providers = gateway.identity.jwt_providers
    if not providers:
        return None
    config = {
        "providers": {p.name: provider_config(p) for p in providers},
        "requirement_map": requirement_map(gateway),
        # Every route names its requirement; this is the safety net for one that would not.
        "rules": [{"match": {"prefix": "/"}, "requirement_name": OPTIONAL_REQUIREMENT}],
    }
    # Discovered (ECDS), not the listener's: a key withdrawn from a JWKS file or inline set (or any other
    # provider edit) reaches the next request on every open connection; as the listener's, it would reach
    # only connections opened after the edit, and a withdrawn key would verify on the others until they drain.
    return HttpFilter(JWT_FILTER, Slot.AUTHN, typed(JWT_TYPE, config), off=typed(JWT_PER_ROUTE_TYPE, {"disabled": True}),
                      discovered=True)  # fmt: skip


def idle_filter() -> HttpFilter:
    """jwt_authn as configured on a gateway with no JWT providers: verifies nothing, so no token proves
    anything. Served for an older listener that still names the filter (translate/listener.py)."""
    return HttpFilter(JWT_FILTER, Slot.AUTHN, typed(JWT_TYPE), discovered=True)


def route_requirement(gateway: GatewayIR, route: RouteIR) -> FilterUses:
    """The route's jwt_authn requirement ({} when the gateway checks no JWTs)."""
    if not gateway.identity.jwt_providers:
        return {}
    name = user_requirement_name(route.auth.provider) if route.auth is not None else OPTIONAL_REQUIREMENT
    return {JWT_FILTER: typed(JWT_PER_ROUTE_TYPE, {"requirement_name": name})}


def optional(gateway: GatewayIR) -> FilterUses:
    """Tokens checked when sent, none required ({} when the gateway checks no JWTs)."""
    if not gateway.identity.jwt_providers:
        return {}
    return {JWT_FILTER: typed(JWT_PER_ROUTE_TYPE, {"requirement_name": OPTIONAL_REQUIREMENT})}


def route_disabled(gateway: GatewayIR) -> FilterUses:
    """jwt_authn off, on a route that serves no upstream ({} when the gateway checks no JWTs)."""
    if not gateway.identity.jwt_providers:
        return {}
    return {JWT_FILTER: Use.OFF}


# ---------------------------------------------------------------- JWKS clusters


def _jwks_cluster(provider: JwtProviderIR) -> Cluster:
    assert provider.jwks_url is not None
    url = urlsplit(provider.jwks_url)
    host = url.hostname or ""
    if not host:  # the policy model accepts http(s) URLs with a host only
        raise ValueError(f"JWT provider {provider.name}: jwks.url {provider.jwks_url!r} names no host")
    tls = url.scheme == "https"
    try:
        port = url.port or (443 if tls else 80)
    except ValueError:
        raise ValueError(f"JWT provider {provider.name}: jwks.url {provider.jwks_url!r} has a bad port") from None
    name = jwks_cluster_name(provider.name)
    body: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": JWKS_FETCH_TIMEOUT,
        "load_assignment": load_assignment(name, (EndpointIR(host, port),)),
    }
    if tls:
        context: dict[str, Any] = {
            "common_tls_context": {
                "validation_context": {
                    # Envoy has no built-in trust store: the host's CA bundle.
                    "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
                    "match_typed_subject_alt_names": [san_matcher(host)],
                }
            }
        }
        if not is_ip(host):
            context["sni"] = host
        body["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed(UPSTREAM_TLS_TYPE, context),
        }
    return to_message(Cluster, body)


def jwks_clusters(gateway: GatewayIR) -> list[Cluster]:
    """One cluster per provider whose keys Envoy fetches from a URL (sorted by name)."""
    return [_jwks_cluster(p) for p in gateway.identity.jwt_providers if p.jwks_url is not None]
