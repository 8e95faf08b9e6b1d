"""What a protocol's translator must provide; the neutral translators do the rest.

The neutral translators (listener, route, rbac, local_reply, cluster, jwt,
tls, oauth, policy_service) know routes, principals, upstreams and the policy
service. Everything that depends on what the protocol's messages look like is
asked of its translator, one subclass of `ProtocolTranslator` per protocol:

- `http_filters`: its filters (a deframer, a session filter), each in a slot
  of the one filter order (filters.py); they run on its own routes only;
- `call_match` / `response_match`: how its routes pick out the requests the
  policy service decides on, or whose responses it rewrites;
- `sealing_matches`: how its routes pick out the requests whose ids the
  policy service seals per caller (PURPOSE_SEAL, PURPOSE_UNSEAL, ...);
- `common_permissions` / `permissions` / `decided_permissions` /
  `target_permission`: what every grant on a route allows (the methods that
  name nothing: lifecycle, lists, ...), what one grant allows besides, what
  it allows only if the policy service agrees, and a call of some targets
  (for native rules), as RBAC permissions;
- `cel_arguments` / `cel_target`: where Envoy's CEL finds a call's
  arguments and target, for native `when` conditions (translate/cel.py);
- `request_rejections` / `denials` / `condition_denials` /
  `refusals_as_results`: its local replies (its filter's own refusals; what
  a known caller was refused; a native rule's failed condition;
  which refusals read as a result of the call rather than an error);
- `document_routes`: GETs it serves besides its endpoint (A2A: the card);
- `metadata_namespace`, `request_id`, `access_log_field`: where its filter's
  metadata is, and how replies and logs name the request.

Every method is abstract: a translator that leaves one out cannot be
instantiated, so a new protocol cannot be half wired.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

from xds_server.core.cel_syntax import Expr
from xds_server.ir.patterns import NamePattern
from xds_server.ir.types import GatewayIR, RouteIR
from xds_server.translate.filters import HttpFilter


@dataclass(frozen=True)
class DocumentRoute:
    """A GET the protocol serves besides its endpoint (A2A: the agent's card): `path` on the gateway,
    `upstream_path` on the backend, the policy service's `purpose` there (core/wire.py)."""

    path: str
    upstream_path: str
    purpose: str


class ProtocolTranslator(abc.ABC):
    """The protocol-specific half of translating routes of `part` (an IR protocol part class)."""

    kind: ClassVar[str]
    part: ClassVar[type]
    #: What one routed document of this protocol is called in replies ("MCP backend").
    noun: ClassVar[str]

    @abc.abstractmethod
    def http_filters(self, gateway: GatewayIR) -> list[HttpFilter]:
        """The listener filters this protocol contributes (owner = `kind`)."""

    @abc.abstractmethod
    def call_match(self, route: RouteIR) -> dict[str, Any] | None:
        """A route match for the calls `route.decisions.calls` names (None when it names none)."""

    @abc.abstractmethod
    def response_match(self, route: RouteIR) -> dict[str, Any] | None:
        """A route match for the requests whose responses the policy service rewrites (None: none)."""

    @abc.abstractmethod
    def sealing_matches(self, route: RouteIR) -> list[tuple[dict[str, Any], str]]:
        """(route match, ext_proc purpose) of the requests whose ids the policy service seals per
        caller (core/wire.py PURPOSE_SEAL, PURPOSE_UNSEAL); [] for none."""

    @abc.abstractmethod
    def common_permissions(self, route: RouteIR) -> list[dict[str, Any]]:
        """The RBAC permissions (OR-ed by Envoy) every grant on `route` allows, whatever it names."""

    @abc.abstractmethod
    def permissions(self, route: RouteIR, allows: Any) -> list[dict[str, Any]]:
        """The RBAC permissions (OR-ed) one grant's protocol part allows on `route` besides the common ones."""

    @abc.abstractmethod
    def decided_permissions(self, route: RouteIR, allows: Any) -> list[dict[str, Any]]:
        """The RBAC permissions (OR-ed) of what one grant allows only if the policy service then agrees
        (MCP: the tools of conditional rules it decides); [] for none."""

    @abc.abstractmethod
    def target_permission(self, targets: tuple[NamePattern, ...]) -> dict[str, Any]:
        """The RBAC permission of a call of one of `targets` (MCP: `tools/call` of those tools)."""

    @abc.abstractmethod
    def cel_arguments(self) -> Expr:
        """Where Envoy's CEL finds the call's arguments (a map) that the protocol filter extracted."""

    @abc.abstractmethod
    def cel_target(self) -> Expr:
        """Where Envoy's CEL finds the call's target (MCP: the tool name)."""

    @abc.abstractmethod
    def request_rejections(self, gateway: GatewayIR) -> list[dict[str, Any]]:
        """Local-reply mappers for the protocol filter's own refusals (parse errors, limits, ...)."""

    @abc.abstractmethod
    def denials(self, gateway: GatewayIR, known: dict[str, Any]) -> list[dict[str, Any]]:
        """Local-reply mappers for what a known caller (`known`: its RBAC denial) was refused; they name
        the caller as Envoy recognised it (`translate.cel.IDENTIFIED_AGENT`)."""

    @abc.abstractmethod
    def condition_denials(self, gateway: GatewayIR, when: dict[str, Any]) -> list[dict[str, Any]]:
        """Local-reply mappers for a call refused because a native rule's condition failed (`when`:
        that refusal; the rule's id is in RBAC's metadata, translate/rbac.py CONDITION_RULE_KEY)."""

    @abc.abstractmethod
    def document_routes(self, route: RouteIR) -> list[DocumentRoute]:
        """The GETs served besides the route's endpoint (A2A: its card); [] for none."""

    #: Request headers never sent to the backend (A2A: accept-encoding, as its answers are rewritten).
    upstream_headers_removed: ClassVar[tuple[str, ...]] = ()

    #: The request header carrying a protocol session's id (its requests stick to one replica), if any.
    session_header: str | None = None

    def lost_sessions(self, request_id: str) -> list[dict[str, Any]]:
        """Local-reply mappers for a request of a session whose upstream host is gone (none by
        default: a protocol without sessions)."""
        return []

    @abc.abstractmethod
    def refusals_as_results(self, gateway: GatewayIR) -> dict[str, Any] | None:
        """A reply filter true for requests whose policy refusals are answered as the protocol's own
        successful result (MCP: a tool result with isError), or None where there are none."""

    @property
    @abc.abstractmethod
    def metadata_namespace(self) -> str:
        """Where its filter puts what it deframed (sent to the policy service with each check)."""

    @property
    @abc.abstractmethod
    def request_id(self) -> str:
        """The Envoy format string of the request's id, for JSON-RPC error bodies."""

    @property
    @abc.abstractmethod
    def access_log_field(self) -> str:
        """This protocol's part of the access log line (e.g. the method and the tool)."""
