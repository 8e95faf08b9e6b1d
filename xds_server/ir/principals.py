"""Who is calling: the identity sources, each defined once, for every place that checks it.

A principal is one way of proving an agent's identity. Each source has one
class here that says, in one place, what it means everywhere it is checked:

    | source   | RBAC principal (Envoy, native)          | Python check (policy service)          |
    |----------|-----------------------------------------|----------------------------------------|
    | header   | request header equals the value         | header equals the value                |
    | spiffe   | verified URI SAN of the client          | the URI SAN Envoy forwarded            |
    |          | certificate (mTLS)                      |                                        |
    | jwt      | jwt_authn metadata claim                | verified payload's claim               |
    | apiKey   | key header equals the key               | key header equals the key              |
    | anonymous| no credential header, no client         | no such header, no token, no           |
    |          | certificate                             | certificate                            |

Envoy names the agent a request proves once, from these RBAC principals (the
identify filter, translate/identity.py): the backend's agent header, native
conditions, the access log and the local replies all read that name.

The user an agent acts for (`UserMatchIR`, a rule's `users`) is checked the
same way: one RBAC principal, one Python check, both here.

A new identity source is one dataclass satisfying `PrincipalSource` (its
`KIND` and methods; a `lookup()` reading a new place of the
request needs its branch in `caller_value`), its entry in `Principal`, and the line of
ir/build.py that gives agents that principal on a gateway that can check it;
the translators and the policy service pick it up from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from xds_server.core.wire import JWT_METADATA_NAMESPACE

JwtPayloads = Mapping[str, Any]  # provider name → verified token payload (jwt_authn's metadata)


@dataclass(frozen=True)
class Caller:
    """What the policy service sees of a request's identity (all of it set or verified by Envoy)."""

    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    jwt: JwtPayloads = field(default_factory=dict)
    peer_uri_san: str | None = None  # the client certificate's URI SAN (SPIFFE ID), if Envoy sent it


@dataclass(frozen=True)
class SecretIR:
    """A secret read from where a policy points (an environment variable or a file).

    `value` is what Envoy needs; it is never shown: `to_plain` renders it
    redacted, and `repr` leaves it out. `env`/`file` say where it came from.
    """

    env: str | None
    file: str | None  # absolute path
    value: str = field(repr=False)

    @property
    def source(self) -> str:
        return f"env {self.env}" if self.env is not None else f"file {self.file}"


# ---------------------------------------------------------------- Envoy matcher pieces


def _one_of(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    matchers = [{"string_match": {"exact": v}} for v in values]
    return matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}


def metadata_principal(namespace: str, path: Sequence[str], value: dict[str, Any]) -> dict[str, Any]:
    """An RBAC principal on the request's dynamic metadata: `namespace`'s value at `path` matches `value`."""
    keys = [{"key": k} for k in path]
    return {"sourced_metadata": {"metadata_matcher": {"filter": namespace, "path": keys, "value": value}}}


def jwt_claim_principal(provider: str, claim: str | None, value: dict[str, Any]) -> dict[str, Any]:
    """An RBAC principal on a verified token's payload (`claim` None: the payload itself)."""
    return metadata_principal(JWT_METADATA_NAMESPACE, [provider] + ([claim] if claim is not None else []), value)


# ---------------------------------------------------------------- the sources


class PrincipalSource(Protocol):
    """What every identity source defines (checked by mypy wherever a `Principal` is used)."""

    KIND: ClassVar[str]  # its `kind` in the rendered IR

    def rbac(self) -> dict[str, Any]:
        """Its RBAC principal."""
        ...

    def group_value(self) -> str:
        """Its value (agents list their principals sorted by kind, then by it)."""
        ...

    def matches(self, caller: Caller) -> bool:
        """The policy service's check: does `caller` prove this principal?"""
        ...

    def lookup(self) -> tuple[Source, str] | None:
        """Where a caller's proof of it is read (`caller_value`) and the value that proves it, so that
        agents are found by looking a caller's values up (authz/state.py `AgentFinder`); None for a
        principal only `matches` can check. Where it is not None, `matches` is exactly
        `caller_value(source, caller) == value`."""
        ...


#: Where a caller presents a proof: ("header", name), ("jwt", provider, claim) or ("spiffe",).
Source = tuple[str, ...]


def caller_value(source: Source, caller: Caller) -> Any:
    """What `caller` presents at `source` (None when nothing): a string, or any JSON value of a claim."""
    kind = source[0]
    if kind == "header":
        return caller.headers.get(source[1])
    if kind == "jwt":
        payload = caller.jwt.get(source[1])
        return payload.get(source[2]) if isinstance(payload, Mapping) else None
    if kind == "spiffe":
        return caller.peer_uri_san
    raise ValueError(f"unknown principal source {source!r}")


def _proves(principal: PrincipalSource, caller: Caller) -> bool:
    found = principal.lookup()
    if found is None:
        raise TypeError(f"{type(principal).__name__} has no lookup: it checks callers itself")
    source, value = found
    return caller_value(source, caller) == value


@dataclass(frozen=True, order=True)
class HeaderPrincipal:
    """Identity asserted by a request header the gateway trusts (development only)."""

    KIND: ClassVar[str] = "header"

    header: str  # lower-case header name
    value: str

    def rbac(self) -> dict[str, Any]:
        return {"header": {"name": self.header, "string_match": {"exact": self.value}}}

    def group_value(self) -> str:
        return self.value

    def matches(self, caller: Caller) -> bool:
        return _proves(self, caller)

    def lookup(self) -> tuple[Source, str] | None:
        return ("header", self.header), self.value


@dataclass(frozen=True, order=True)
class SpiffePrincipal:
    """Identity proven by an mTLS client certificate whose URI SAN is `spiffe_id`."""

    KIND: ClassVar[str] = "spiffe"

    spiffe_id: str

    def rbac(self) -> dict[str, Any]:
        # The URI SAN of a client certificate the TLS handshake already verified.
        return {"authenticated": {"principal_name": {"exact": self.spiffe_id}}}

    def group_value(self) -> str:
        return self.spiffe_id

    def matches(self, caller: Caller) -> bool:
        return _proves(self, caller)

    def lookup(self) -> tuple[Source, str] | None:
        return ("spiffe",), self.spiffe_id


@dataclass(frozen=True, order=True)
class JwtPrincipal:
    """Identity proven by a valid JWT from `provider` whose `claim` equals `value`."""

    KIND: ClassVar[str] = "jwt"

    provider: str
    claim: str
    value: str

    def rbac(self) -> dict[str, Any]:
        # jwt_authn puts a verified token's payload in metadata under the provider's name.
        return jwt_claim_principal(self.provider, self.claim, {"string_match": {"exact": self.value}})

    def group_value(self) -> str:
        return self.value

    def matches(self, caller: Caller) -> bool:
        return _proves(self, caller)

    def lookup(self) -> tuple[Source, str] | None:
        return ("jwt", self.provider, self.claim), self.value


@dataclass(frozen=True, order=True)
class ApiKeyPrincipal:
    """Identity proven by an API key in `header`. The key was read when the IR was built."""

    KIND: ClassVar[str] = "apiKey"

    header: str
    key: SecretIR

    def rbac(self) -> dict[str, Any]:
        return {"header": {"name": self.header, "string_match": {"exact": self.key.value}}}

    def group_value(self) -> str:
        return self.key.value

    def matches(self, caller: Caller) -> bool:
        return _proves(self, caller)

    def lookup(self) -> tuple[Source, str] | None:
        return ("header", self.header), self.key.value


@dataclass(frozen=True, order=True)
class AnonymousPrincipal:
    """No identity at all: none of `headers` (every header a credential can come in) and, where
    client certificates are asked for, no certificate. Only a Gateway's anonymous agent has it.

    It excludes every other principal by construction (each needs one of those
    headers or a certificate), so a caller that presents a credential which
    proves nothing is an unknown agent, never anonymous.
    """

    KIND: ClassVar[str] = "anonymous"

    headers: tuple[str, ...]  # lower-case, sorted
    certificates: bool  # client certificates are asked for on this gateway

    def rbac(self) -> dict[str, Any]:
        absent = [{"not_id": {"header": {"name": h, "present_match": True}}} for h in self.headers]
        if self.certificates:
            # Any verified peer certificate (its URI SAN, DNS SAN or subject is not empty).
            absent.append({"not_id": {"authenticated": {"principal_name": {"safe_regex": {"regex": ".+"}}}}})
        return {"and_ids": {"ids": absent}}

    def group_value(self) -> str:
        return ",".join(self.headers)

    def matches(self, caller: Caller) -> bool:
        if any(h in caller.headers for h in self.headers) or caller.jwt:
            return False
        return not (self.certificates and caller.peer_uri_san is not None)

    def lookup(self) -> tuple[Source, str] | None:
        return None  # proven by absences: checked with `matches`


Principal = HeaderPrincipal | SpiffePrincipal | JwtPrincipal | ApiKeyPrincipal | AnonymousPrincipal
#: Every source, checked against PrincipalSource by mypy (a source missing a method fails `make lint`).
_SOURCES: tuple[type[PrincipalSource], ...] = (
    HeaderPrincipal, SpiffePrincipal, JwtPrincipal, ApiKeyPrincipal, AnonymousPrincipal
)  # fmt: skip


def principal_sort_key(principal: Principal) -> tuple[str, str]:
    """Principals of different kinds do not compare: sort them by kind (class name), then value."""
    return type(principal).__name__, principal.group_value()


# ---------------------------------------------------------------- users behind agents


@dataclass(frozen=True, order=True)
class UserMatchIR:
    """The user an agent acts for, from a JWT of `provider`: every non-empty condition must hold."""

    provider: str
    subjects: tuple[str, ...]
    groups: tuple[str, ...]  # at least one of them in the token's `groups_claim`
    groups_claim: str
    claims: tuple[tuple[str, str], ...]  # exact claim values, sorted

    def rbac(self) -> dict[str, Any]:
        """The RBAC principal: a verified token of `provider` satisfying every given condition."""
        conditions = []
        if self.subjects:
            conditions.append(jwt_claim_principal(self.provider, "sub", _one_of(self.subjects)))
        if self.groups:
            groups = _one_of(self.groups)
            # A list of groups (the usual form) holding one of them, or a single group as a string.
            either = {"or_match": {"value_matchers": [{"list_match": {"one_of": groups}}, groups]}}
            conditions.append(jwt_claim_principal(self.provider, self.groups_claim, either))
        for claim, value in self.claims:
            conditions.append(jwt_claim_principal(self.provider, claim, {"string_match": {"exact": value}}))
        if not conditions:
            # Any user with a valid token of the provider.
            conditions.append(jwt_claim_principal(self.provider, None, {"present_match": True}))
        return conditions[0] if len(conditions) == 1 else {"and_ids": {"ids": conditions}}

    def matches(self, jwt_payloads: JwtPayloads | None) -> bool:
        """Whether the verified token of `provider` satisfies every condition (as `rbac()` checks it)."""
        payload = (jwt_payloads or {}).get(self.provider)
        if not isinstance(payload, Mapping):
            return False
        if self.subjects and payload.get("sub") not in self.subjects:
            return False
        if self.groups:
            groups = payload.get(self.groups_claim)
            held = [groups] if isinstance(groups, str) else groups if isinstance(groups, list) else []
            if not any(isinstance(g, str) and g in self.groups for g in held):
                return False
        return all(isinstance(payload.get(k), str) and payload.get(k) == v for k, v in self.claims)
