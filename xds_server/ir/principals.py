"""Who is calling: the identity sources, each defined once, for every place that checks it.

A principal is one way of proving an agent's identity. Each source has one
class here that says, in one place, what it means everywhere it is checked:

    | source   | RBAC principal (Envoy, native)   | local-reply filter (Envoy)   | Python check (policy service) |
    |----------|----------------------------------|------------------------------|-------------------------------|
    | header   | request header equals the value  | header is one of the values  | header equals the value       |
    | spiffe   | verified URI SAN of the client   | CEL on the peer's URI SAN    | the URI SAN Envoy forwarded   |
    |          | certificate (mTLS)               |                              |                               |
    | jwt      | jwt_authn metadata claim         | metadata claim               | verified payload's claim      |
    | apiKey   | key header equals the key        | key header equals the key    | key header equals the key     |
    | anonymous| no credential header, no client  | CEL: no such header, no      | no such header, no token, no  |
    |          | certificate                      | peer certificate             | certificate                   |

RBAC denials do not say which agent was recognised, so the local replies
check the principals again to tell "unknown agent" from "a known agent that
may not do this" (`reply_matchers`). Principals of one source share one
filter where they can and name the caller by the identity's value; an API
key (never shown) or a claim that cannot appear in a format string names the
agent instead.

The user an agent acts for (`UserMatchIR`, a rule's `users`) is checked the
same way: one RBAC principal, one Python check, both here.

A new identity source is one dataclass satisfying `PrincipalSource` (its
`KIND`, `ORDER` and methods; a `lookup()` reading a new place of the
request needs its branch in `caller_value`), its entry in `Principal`, and the line of
ir/build.py that gives agents that principal on a gateway that can check it;
the translators and the policy service pick it up from here.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from xds_server.core.wire import JWT_METADATA_NAMESPACE, typed

JwtPayloads = Mapping[str, Any]  # provider name → verified token payload (jwt_authn's metadata)


@dataclass(frozen=True)
class Caller:
    """What the policy service sees of a request's identity (all of it set or verified by Envoy)."""

    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    jwt: JwtPayloads = field(default_factory=dict)
    peer_uri_san: str | None = None  # the client certificate's URI SAN (SPIFFE ID), if Envoy sent it


@dataclass(frozen=True)
class ReplyMatcher:
    """An access-log filter true when a request proves one of some agents (a local reply names
    the agent as Envoy's identify filter recorded it, not by the value that proved it)."""

    when: dict[str, Any]


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


def jwt_claim_principal(provider: str, claim: str | None, value: dict[str, Any]) -> dict[str, Any]:
    """An RBAC principal on a verified token's payload (`claim` None: the payload itself)."""
    path = [{"key": provider}] + ([{"key": claim}] if claim is not None else [])
    return {"sourced_metadata": {"metadata_matcher": {"filter": JWT_METADATA_NAMESPACE, "path": path, "value": value}}}


def cel_filter(expression: str) -> dict[str, Any]:
    """An access-log filter evaluating a CEL expression (natively, in Envoy)."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": typed(
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter", {"expression": expression}
            ),
        }
    }


def _header_filter(header: str, match: dict[str, Any]) -> dict[str, Any]:
    return {"header_filter": {"header": {"name": header, "string_match": match}}}


def _jwt_claim_filter(provider: str, claim: str, values: list[str]) -> dict[str, Any]:
    return {
        "metadata_filter": {
            "matcher": {
                "filter": JWT_METADATA_NAMESPACE,
                "path": [{"key": provider}, {"key": claim}],
                "value": _one_of(values),
            },
            "match_if_key_not_found": False,
        }
    }


def _formattable(key: str) -> bool:
    """Whether `key` can be a step of a %DYNAMIC_METADATA(ns:a:b)% path."""
    return not any(c in key for c in ":%()")


# ---------------------------------------------------------------- the sources


class PrincipalSource(Protocol):
    """What every identity source defines (checked by mypy wherever a `Principal` is used)."""

    KIND: ClassVar[str]  # its `kind` in the rendered IR
    ORDER: ClassVar[int]  # where its shared reply filter goes among the sources

    def rbac(self) -> dict[str, Any]:
        """Its RBAC principal."""
        ...

    def reply_group(self) -> tuple[str, ...] | None:
        """The key of the reply filter it shares with principals of its source (None: a filter of its own)."""
        ...

    def group_value(self) -> str:
        """The value it adds to its group's shared filter."""
        ...

    def reply_filter(self) -> dict[str, Any]:
        """Its own reply filter (used when it shares none)."""
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
    ORDER: ClassVar[int] = 0  # where its shared reply filter goes among the sources

    header: str  # lower-case header name
    value: str

    def rbac(self) -> dict[str, Any]:
        return {"header": {"name": self.header, "string_match": {"exact": self.value}}}

    def reply_group(self) -> tuple[str, ...] | None:
        return (self.header,)

    @staticmethod
    def reply_matcher(group: tuple[str, ...], values: list[str]) -> ReplyMatcher:
        (header,) = group
        regex = "^(" + "|".join(re.escape(v) for v in values) + ")$"
        return ReplyMatcher(_header_filter(header, {"safe_regex": {"regex": regex}}))

    def group_value(self) -> str:
        return self.value

    def reply_filter(self) -> dict[str, Any]:
        return self.reply_matcher((self.header,), [self.value]).when

    def matches(self, caller: Caller) -> bool:
        return _proves(self, caller)

    def lookup(self) -> tuple[Source, str] | None:
        return ("header", self.header), self.value


@dataclass(frozen=True, order=True)
class SpiffePrincipal:
    """Identity proven by an mTLS client certificate whose URI SAN is `spiffe_id`."""

    KIND: ClassVar[str] = "spiffe"
    ORDER: ClassVar[int] = 2

    spiffe_id: str

    def rbac(self) -> dict[str, Any]:
        # The URI SAN of a client certificate the TLS handshake already verified.
        return {"authenticated": {"principal_name": {"exact": self.spiffe_id}}}

    def reply_group(self) -> tuple[str, ...] | None:
        return ()

    @staticmethod
    def reply_matcher(group: tuple[str, ...], values: list[str]) -> ReplyMatcher:
        ids = ", ".join(json.dumps(i) for i in values)
        return ReplyMatcher(cel_filter(f"connection.uri_san_peer_certificate in [{ids}]"))

    def group_value(self) -> str:
        return self.spiffe_id

    def reply_filter(self) -> dict[str, Any]:
        return self.reply_matcher((), [self.spiffe_id]).when

    def matches(self, caller: Caller) -> bool:
        return _proves(self, caller)

    def lookup(self) -> tuple[Source, str] | None:
        return ("spiffe",), self.spiffe_id


@dataclass(frozen=True, order=True)
class JwtPrincipal:
    """Identity proven by a valid JWT from `provider` whose `claim` equals `value`."""

    KIND: ClassVar[str] = "jwt"
    ORDER: ClassVar[int] = 1

    provider: str
    claim: str
    value: str

    def rbac(self) -> dict[str, Any]:
        # jwt_authn puts a verified token's payload in metadata under the provider's name.
        return jwt_claim_principal(self.provider, self.claim, {"string_match": {"exact": self.value}})

    def reply_group(self) -> tuple[str, ...] | None:
        # A claim that cannot be put in a format string gets a filter of its own, naming the agent.
        return (self.provider, self.claim) if _formattable(self.claim) else None

    @staticmethod
    def reply_matcher(group: tuple[str, ...], values: list[str]) -> ReplyMatcher:
        provider, claim = group
        return ReplyMatcher(_jwt_claim_filter(provider, claim, values))

    def group_value(self) -> str:
        return self.value

    def reply_filter(self) -> dict[str, Any]:
        return _jwt_claim_filter(self.provider, self.claim, [self.value])

    def matches(self, caller: Caller) -> bool:
        return _proves(self, caller)

    def lookup(self) -> tuple[Source, str] | None:
        return ("jwt", self.provider, self.claim), self.value


@dataclass(frozen=True, order=True)
class ApiKeyPrincipal:
    """Identity proven by an API key in `header`. The key was read when the IR was built."""

    KIND: ClassVar[str] = "apiKey"
    ORDER: ClassVar[int] = 3

    header: str
    key: SecretIR

    def rbac(self) -> dict[str, Any]:
        return {"header": {"name": self.header, "string_match": {"exact": self.key.value}}}

    def reply_group(self) -> tuple[str, ...] | None:
        return None  # the key is never shown: the reply names the agent

    def group_value(self) -> str:
        return self.key.value

    def reply_filter(self) -> dict[str, Any]:
        return _header_filter(self.header, {"exact": self.key.value})

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
    ORDER: ClassVar[int] = 4

    headers: tuple[str, ...]  # lower-case, sorted
    certificates: bool  # client certificates are asked for on this gateway

    def rbac(self) -> dict[str, Any]:
        absent = [{"not_id": {"header": {"name": h, "present_match": True}}} for h in self.headers]
        if self.certificates:
            # Any verified peer certificate (its URI SAN, DNS SAN or subject is not empty).
            absent.append({"not_id": {"authenticated": {"principal_name": {"safe_regex": {"regex": ".+"}}}}})
        return {"and_ids": {"ids": absent}}

    def reply_group(self) -> tuple[str, ...] | None:
        return None  # one anonymous agent per gateway: the reply names it

    def group_value(self) -> str:
        return ",".join(self.headers)

    def reply_filter(self) -> dict[str, Any]:
        absent = [f"!({json.dumps(h)} in request.headers)" for h in self.headers]
        if self.certificates:
            absent.append("!connection.mtls")
        return cel_filter(" && ".join(absent))

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


def reply_matchers(agents: tuple[Any, ...]) -> list[ReplyMatcher]:
    """Every way a request can prove a known agent, exactly as the RBAC principals check it:
    shared filters per source and group (in source order, then group), then the filters of
    principals that cannot share one (in agent order)."""
    groups: dict[tuple[int, str, tuple[str, ...]], list[str]] = defaultdict(list)
    makers: dict[tuple[int, str, tuple[str, ...]], Any] = {}
    single: list[ReplyMatcher] = []
    for agent in agents:
        for p in agent.principals:
            group = p.reply_group()
            if group is None:
                single.append(ReplyMatcher(p.reply_filter()))
                continue
            key = (p.ORDER, type(p).__name__, group)
            groups[key].append(p.group_value())
            makers[key] = type(p).reply_matcher
    shared = [makers[key](key[2], sorted(set(values))) for key, values in sorted(groups.items())]
    return shared + single


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
