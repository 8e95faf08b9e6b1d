"""Delegated credentials: what a backend receives for the user an agent acts for.

A backend with `credentials` never sees the caller's own credentials. Envoy
sends every request of such a backend to ext_authz; the policy service finds
the user in the JWT payload that jwt_authn verified (metadata
`envoy.filters.http.jwt_authn`, under the provider's name), obtains the
backend's credential for that user and answers OK with the credential header
set and the caller's credential headers removed.

- `token_exchange`: RFC 8693 at the authorization server's token endpoint,
  the user's token as `subject_token`, the gateway authenticated with HTTP
  Basic (client id and secret). Answers are cached per (user token, audience,
  scope) until shortly before `expires_in`; concurrent requests for the same
  key share one exchange.
- `per_user_secrets`: the user's `sub` looked up in a YAML/JSON file
  `{sub: secret}`, re-read when the file changes.

Everything fails closed: no verified user, a token endpoint that is down,
slow or refuses, a user without a stored secret, a client secret that cannot
be read all refuse the request with a JSON-RPC error. Secrets (the client
secret, user tokens, issued tokens, stored secrets) never appear in messages,
logs or reprs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

import yaml

from xds_server.core import errors
from xds_server.core.errors import ErrorKind
from xds_server.core.secrets import SecretUnavailable, read_secret
from xds_server.ir.types import IR, CredentialsIR, GatewayIR

log = logging.getLogger(__name__)

# The refusals of this module (in xds_server/errors.py with every other code).
USER_TOKEN_REQUIRED = errors.USER_TOKEN_REQUIRED
NO_USER_CREDENTIAL = errors.NO_USER_CREDENTIAL
CREDENTIAL_UNAVAILABLE = errors.CREDENTIAL_UNAVAILABLE

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
MAX_EXCHANGE_SECONDS = 10.0
_ERROR_CODE = re.compile(r"^[\x21-\x7e]{1,64}$")  # an RFC 6749 `error` value; anything else is not echoed
_HEADER_VALUE = re.compile(r"^[\x20-\x7e\x80-\xff\t]*$")  # no CR, LF or other controls


class CredentialError(Exception):
    """The request cannot get its backend credential; `kind` and `message` go to the caller."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# ---------------------------------------------------------------- per backend settings


@dataclass(frozen=True)
class Delegation:
    """One backend's credential settings, resolved from the IR (secrets read once per policy load).

    `strip_headers` are the caller's credential headers the backend must not
    see: every JWT provider's token header, the API key header and the trusted
    identity header, less the header the credential goes in (set, so replaced).
    `problem` is set when the settings cannot work (an unreadable client
    secret): every request is then refused.
    """

    backend: str
    credentials: CredentialsIR
    provider: str  # the JwtProvider whose verified user the credential is for
    token_header: str  # where that provider's token is (lower-case)
    strip_headers: tuple[str, ...]
    timeout_s: float  # bound on one token exchange
    client_secret: str | None = field(default=None, repr=False)
    problem: str | None = None

    @property
    def header(self) -> str:
        return self.credentials.header


def delegations_from_ir(ir: IR) -> dict[str, Delegation]:
    """A `Delegation` per backend with credentials (reads client secrets; never raises for them)."""
    out: dict[str, Delegation] = {}
    for gateway in ir.gateways:
        for backend in gateway.routes:
            if backend.credentials is None:
                continue
            creds = backend.credentials
            provider = backend.auth.provider if backend.auth is not None else ""
            token_header = next((p.token_header for p in gateway.identity.jwt_providers if p.name == provider),
                                "authorization")  # fmt: skip
            secret, problem = None, None
            if creds.kind == "token_exchange":
                try:
                    secret = read_secret(creds.client_secret_env, creds.client_secret_file,
                                         what=f"backend {backend.name}: token exchange client secret")  # fmt: skip
                except SecretUnavailable as exc:
                    problem = "the gateway's client secret for the token endpoint is not available"
                    log.error("%s; requests to this backend are refused", exc)
            elif creds.kind != "per_user_secrets":
                problem = f"unknown credential kind {creds.kind!r}"
            # Envoy's timeout on the whole check is the backend's policy-service timeout: leave it a margin.
            timeout = min(MAX_EXCHANGE_SECONDS, max(0.05, backend.policy_service.timeout_ms / 1000 * 0.8))
            out[backend.name] = Delegation(
                backend=backend.name, credentials=creds, provider=provider, token_header=token_header,
                strip_headers=_caller_credential_headers(gateway, creds.header), timeout_s=timeout,
                client_secret=secret, problem=problem,
            )  # fmt: skip
    return out


def _caller_credential_headers(gateway: GatewayIR, credential_header: str) -> tuple[str, ...]:
    # The API-key header even when no agent has a key: whatever a caller sends there is not for the backend.
    names = set(gateway.credential_headers) | {gateway.identity.api_key_header}
    # Envoy applies removals after setting headers: never remove the one we set.
    names.discard(credential_header)
    return tuple(sorted(names))


# ---------------------------------------------------------------- the user


@dataclass(frozen=True)
class User:
    """The user a request acts for: the verified JWT payload and, if present, the raw token."""

    sub: str
    claims: Mapping[str, Any]
    token: str | None = field(default=None, repr=False)


def user_of(delegation: Delegation, jwt_payloads: Mapping[str, Any], headers: Mapping[str, str]) -> User:
    """The verified user of `delegation.provider`; raises CredentialError when there is none.

    `jwt_payloads` is the jwt_authn metadata (provider name → verified
    payload). Only a payload jwt_authn put there counts: a token in a header
    proves nothing by itself.
    """
    payload = jwt_payloads.get(delegation.provider)
    sub = payload.get("sub") if isinstance(payload, Mapping) else None
    if not isinstance(sub, str) or not sub:
        raise CredentialError(
            USER_TOKEN_REQUIRED,
            f"Backend '{delegation.backend}' acts for a user: send a valid token of provider "
            f"'{delegation.provider}' (no verified user with a 'sub' claim)",
        )
    assert isinstance(payload, Mapping)
    return User(sub, payload, bearer_token(headers.get(delegation.token_header)))


def bearer_token(value: str | None) -> str | None:
    """The token in a token header: after `Bearer ` if that prefix is there, else the whole value."""
    if not value:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    return value or None


# ---------------------------------------------------------------- token exchange


def _shown_url(url: str) -> str:
    """The endpoint as named in messages: no user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 section 2.3.1: both parts form-urlencoded, then HTTP Basic."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def exchange_form(credentials: CredentialsIR, subject_token: str) -> dict[str, str]:
    """The RFC 8693 request body (form fields)."""
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
    }
    if credentials.audience:
        form["audience"] = credentials.audience
    if credentials.scope:
        form["scope"] = credentials.scope
    return form


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    expires_in: float | None


def parse_token_response(status: int, body: bytes, endpoint: str) -> IssuedToken:
    """The token from a token endpoint's answer; raises CredentialError naming what was wrong."""
    import json

    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if status != 200:
        code = document.get("error") if isinstance(document, dict) else None
        shown = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        raise _exchange_failed(endpoint, f"it answered HTTP {status}{shown}")
    if not isinstance(document, dict):
        raise _exchange_failed(endpoint, "its answer is not a JSON object")
    token = document.get("access_token")
    if not isinstance(token, str) or not token or not _HEADER_VALUE.match(token):
        raise _exchange_failed(endpoint, "its answer has no usable access_token")
    token_type = document.get("token_type")
    if isinstance(token_type, str) and token_type.lower() not in ("bearer", "n_a"):
        raise _exchange_failed(endpoint, f"it issued a token of type {token_type[:32]!r}, not a bearer token")
    expires = document.get("expires_in")
    expires_in = float(expires) if isinstance(expires, (int, float)) and not isinstance(expires, bool) else None
    return IssuedToken(token, expires_in)


def _exchange_failed(endpoint: str, problem: str) -> CredentialError:
    return CredentialError(CREDENTIAL_UNAVAILABLE, f"Token exchange at {endpoint} failed: {problem}")


def cache_seconds(expires_in: float | None) -> float:
    """How long an issued token is reused: until 30 s (at most a tenth of its life) before it expires."""
    if expires_in is None or expires_in <= 0:
        return 0.0
    return expires_in - min(30.0, expires_in / 10)


CacheKey = tuple[str, str, str, str, str]


class TokenExchanger:
    """RFC 8693 exchanges with a cache and one exchange in flight per key.

    `http` is an `httpx2.AsyncClient` (made on first use when not given);
    `clock` is monotonic seconds (tests move it).
    """

    def __init__(self, http: Any = None, *, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000) -> None:  # fmt: skip
        self._http = http
        self._own_http = http is None
        self._clock = clock
        self._max_entries = max_entries
        self._cache: OrderedDict[CacheKey, tuple[str, float]] = OrderedDict()
        self._inflight: dict[CacheKey, asyncio.Future[str]] = {}
        self.exchanges = 0  # how many requests went to token endpoints (for tests and metrics)

    async def token(self, delegation: Delegation, subject_token: str) -> str:
        creds = delegation.credentials
        assert creds.token_endpoint is not None and creds.client_id is not None
        key: CacheKey = (creds.token_endpoint, creds.client_id, hashlib.sha256(subject_token.encode()).hexdigest(),
                         creds.audience or "", creds.scope or "")  # fmt: skip
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > self._clock():
                self._cache.move_to_end(key)
                return cached[0]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            # A task of its own: a caller that goes away does not cancel the others' exchange.
            task = asyncio.ensure_future(self._exchange_and_cache(key, delegation, subject_token))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: CacheKey, task: asyncio.Future[str]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when every caller went away

    async def _exchange_and_cache(self, key: CacheKey, delegation: Delegation, subject_token: str) -> str:
        issued = await self._exchange(delegation, subject_token)
        lifetime = cache_seconds(issued.expires_in)
        if lifetime > 0:
            self._remember(key, issued.access_token, self._clock() + lifetime)
        return issued.access_token

    def _remember(self, key: CacheKey, token: str, until: float) -> None:
        self._cache[key] = (token, until)
        self._cache.move_to_end(key)
        now = self._clock()
        for old in [k for k, (_, expiry) in self._cache.items() if expiry <= now]:
            del self._cache[old]
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def _client(self) -> Any:
        if self._http is None:
            import httpx2

            # No redirects: the client secret goes to the configured endpoint only.
            self._http = httpx2.AsyncClient(follow_redirects=False, timeout=MAX_EXCHANGE_SECONDS)
        return self._http

    async def _exchange(self, delegation: Delegation, subject_token: str) -> IssuedToken:
        creds = delegation.credentials
        assert creds.token_endpoint is not None and creds.client_id is not None
        endpoint = _shown_url(creds.token_endpoint)
        if delegation.client_secret is None:
            raise _exchange_failed(endpoint, "the gateway's client secret is not available")
        headers = {
            "authorization": basic_auth(creds.client_id, delegation.client_secret),
            "accept": "application/json",
        }
        self.exchanges += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(delegation.timeout_s):
                response = await self._client().post(
                    creds.token_endpoint, data=exchange_form(creds, subject_token), headers=headers,
                    timeout=delegation.timeout_s,
                )  # fmt: skip
                body = await response.aread()
        except TimeoutError:
            raise _exchange_failed(endpoint, f"no answer within {delegation.timeout_s:g} s") from None
        except Exception as exc:  # noqa: BLE001 -- connection refused, TLS failure, protocol error: all refuse
            raise _exchange_failed(endpoint, f"cannot reach it ({type(exc).__name__})") from None
        log.debug("token exchange at %s: HTTP %d in %.1f ms", endpoint, response.status_code,
                  (time.perf_counter() - started) * 1000)  # fmt: skip
        return parse_token_response(response.status_code, body, endpoint)

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.aclose()
            self._http = None


# ---------------------------------------------------------------- per-user secrets


class SecretsFiles:
    """YAML/JSON files {sub: secret}, re-read when their mtime, size or inode changes."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int, int], Mapping[str, str]]] = {}

    def lookup(self, path: str, sub: str) -> str | None:
        """The secret of `sub`, None if the file has none; raises CredentialError if the file is unusable."""
        return self._table(path).get(sub)

    def _table(self, path: str) -> Mapping[str, str]:
        try:
            st = os.stat(path)
        except OSError as exc:
            log.error("per-user secrets file %s: %s", path, exc.strerror)
            raise _secrets_unusable() from None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        known = self._files.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        try:
            document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            # The exception text could quote the file: log only its type.
            log.error("per-user secrets file %s cannot be read or parsed (%s)", path, type(exc).__name__)
            raise _secrets_unusable() from None
        if document is None:
            document = {}
        if not isinstance(document, dict):
            log.error("per-user secrets file %s is not a mapping {sub: secret}", path)
            raise _secrets_unusable()
        table: dict[str, str] = {}
        for sub, secret in document.items():
            if isinstance(secret, bool) or not isinstance(secret, (str, int)) or not str(secret).strip():
                log.warning("per-user secrets file %s: the entry of %r is not a non-empty string; ignored", path, sub)
                continue
            table[str(sub)] = str(secret).strip()
        self._files[path] = (signature, table)
        return table


def _secrets_unusable() -> CredentialError:
    return CredentialError(CREDENTIAL_UNAVAILABLE, "The gateway's per-user secrets cannot be read")


# ---------------------------------------------------------------- the issuer


@dataclass(frozen=True)
class IssuedCredential:
    """Headers for Envoy: set `header` to `value` (repr hides it), remove `remove`."""

    header: str
    value: str = field(repr=False)
    remove: tuple[str, ...]
    user: str
    kind: str


class CredentialIssuer:
    """The policy service's credential step: settings per backend, token cache, secrets files."""

    def __init__(self, exchanger: TokenExchanger | None = None, secrets: SecretsFiles | None = None) -> None:
        self.exchanger = exchanger or TokenExchanger()
        self.secrets = secrets or SecretsFiles()
        self.delegations: dict[str, Delegation] = {}

    def update(self, ir: IR) -> None:
        """Take a newly published policy set (reads client secrets now)."""
        self.delegations = delegations_from_ir(ir)

    def delegation(self, backend: str) -> Delegation | None:
        return self.delegations.get(backend)

    async def issue(self, delegation: Delegation, jwt_payloads: Mapping[str, Any],
                    headers: Mapping[str, str]) -> IssuedCredential:  # fmt: skip
        """The credential for this request's user; raises CredentialError (fail closed)."""
        if delegation.problem is not None:
            raise CredentialError(CREDENTIAL_UNAVAILABLE,
                                  f"Backend '{delegation.backend}' is misconfigured: {delegation.problem}")  # fmt: skip
        user = user_of(delegation, jwt_payloads, headers)
        creds = delegation.credentials
        if creds.kind == "token_exchange":
            if user.token is None:
                raise CredentialError(
                    CREDENTIAL_UNAVAILABLE,
                    f"Backend '{delegation.backend}': the user's token is not available to exchange "
                    f"(header '{delegation.token_header}' missing after verification)",
                )
            secret = await self.exchanger.token(delegation, user.token)
        else:
            assert creds.secrets_file is not None
            found = self.secrets.lookup(creds.secrets_file, user.sub)
            if found is None:
                raise CredentialError(
                    NO_USER_CREDENTIAL,
                    f"User '{user.sub}' has no credential for backend '{delegation.backend}'",
                )
            secret = found
        value = creds.format.replace("{secret}", secret)
        if not _HEADER_VALUE.match(value):
            raise CredentialError(CREDENTIAL_UNAVAILABLE,
                                  f"Backend '{delegation.backend}': the credential is not a valid header value")  # fmt: skip
        return IssuedCredential(delegation.header, value, delegation.strip_headers, user.sub, creds.kind)

    async def aclose(self) -> None:
        await self.exchanger.aclose()
