"""What the policy service asks of a protocol; the generic decision pipeline (decide.py) does the rest.

The pipeline (identify the caller, conditions, quotas, approvals, delegated
credentials, the decision log) knows nothing of MCP. What depends on the
protocol's messages is asked of its handler, one `ProtocolHandler` subclass
per protocol (authz/mcp/handler.py for MCP), found by the route's kind:

- `parse_call`: what a request calls (MCP: the tool of a `tools/call`), with
  its arguments and id;
- `withheld`: a protocol-specific reason to refuse the call before any rule
  is tried (MCP: the tool guard);
- `unconditionally_allowed`: whether a grant without conditions allows it;
- `refusal_as_result`: a refusal written as the call's own result, where the
  route asks for it (MCP: `deniedToolCalls: toolResult`);
- `rewrite_response`: the response as this caller may see it (MCP: lists
  filtered per caller);
- `update` / `stop`: the handler's own state and background work,
  following each published IR (MCP: re-reading guarded backends' tools);
- `sealing`: where the protocol's messages carry ids that are sealed per
  owner (`IdSealing`; MCP: task ids), or None;
- `exchange`: one request the service reads whole, and its answer as it
  streams (A2A: every request; MCP has none).

Every method is abstract: a protocol cannot be half wired.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from xds_server.authz.messages import BodyRewriter
from xds_server.core.errors import ErrorKind
from xds_server.ir.principals import JwtPayloads

if TYPE_CHECKING:
    from xds_server.authz.sealing import Sealer
    from xds_server.authz.state import PolicyIndex, RouteView


@dataclass(frozen=True)
class Call:
    """One call the policy service may decide on: its JSON-RPC id (with its exact JSON type),
    what it calls (`target`: the MCP tool), and its arguments."""

    request_id: Any
    target: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


class NotACall(ValueError):
    """The body is not one call the service can decide on."""


class MalformedCall(NotACall):
    """The body is the protocol's call method (MCP: `tools/call`) but not one that can be read
    (no tool name, arguments that are not an object). Never "nothing to decide": refused."""


@dataclass(frozen=True)
class Refusal:
    """A protocol's own reason to refuse: the error, its message, and `data` besides the reason."""

    kind: ErrorKind
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)
    rule: str | None = None  # what decided, for the decision log


@dataclass(frozen=True)
class ResponseRewrite:
    """A response as the caller may see it: `body` None when unchanged; `readable` False when the
    body could not be read (the adapter then withholds it); `hidden` names what was removed."""

    body: bytes | None
    readable: bool = True
    hidden: tuple[str, ...] = ()


@dataclass(frozen=True)
class Exchange:
    """A request the handler let through: the body to forward instead of the caller's (None: as it came),
    and `answer(content_type)`, the rewriter of its answer as it streams."""

    body: bytes | None
    answer: Callable[[str], BodyRewriter]
    answer_content_type: str | None = None  # the answer's content type once rewritten, when it is always one


@dataclass(frozen=True)
class Refused:
    """A request the handler refused: the HTTP status and body of the answer, and why (decision log)."""

    status: int
    body: str
    reason: str


#: Queues one decision-log record (the service's `log_decision`).
LogDecision = Callable[[Mapping[str, Any]], None]


class IdSealing(abc.ABC):
    """What sealing a protocol's ids per owner needs to know of its messages (MCP: task ids);
    authz/sealed_ids.py does the rest, the same for every protocol."""

    @abc.abstractmethod
    def origin(self, metadata: Mapping[str, Mapping[str, Any]]) -> str | None:
        """What creates the ids a response hands out, from the request's dynamic metadata (namespace →
        its values; MCP: the tool the MCP filter read), or None when it cannot be told."""

    @abc.abstractmethod
    def created_ids(self, message: Any) -> list[str]:
        """The ids a response message hands out for the first time."""

    @abc.abstractmethod
    def replace_ids(self, message: Any, mapping: Mapping[str, str]) -> bool:
        """Replace, in place, each id of `mapping` wherever the message carries one; True if any was."""

    @abc.abstractmethod
    def named_id(self, body: bytes) -> tuple[Any, Any] | None:
        """(request id, the id it names) of a request naming one; None when the body is not one."""

    @abc.abstractmethod
    def restore(self, body: bytes, sealed: str, raw: str) -> bytes | None:
        """The request body naming `raw` instead of `sealed`, or None when it cannot be done exactly."""

    @abc.abstractmethod
    def restored_headers(self, headers: Mapping[str, str], raw: str) -> dict[str, str]:
        """Headers to set on the restored request (those that repeat the id)."""

    @abc.abstractmethod
    def not_found(self, request_id: Any) -> str:
        """The error body for an id that is not the caller's: the same as for no such thing."""

    @abc.abstractmethod
    def may_use(self, view: RouteView, agent: str, origin: str, jwt: JwtPayloads) -> bool:
        """Whether `agent` may still use what `origin` made (MCP: it is still granted the tool)."""


class ProtocolHandler(abc.ABC):
    """The protocol-specific half of the policy service's decisions for routes of `kind`."""

    kind: ClassVar[str]
    #: What a call's target is called in messages and in `error.data` ("tool").
    noun: ClassVar[str]
    #: The refusal when no rule allows the call.
    denied: ClassVar[ErrorKind]

    @abc.abstractmethod
    def parse_call(self, body: str | bytes) -> Call:
        """The call in a request body; raises NotACall (MalformedCall when it is the call method,
        unreadable)."""

    @abc.abstractmethod
    def withheld(self, view: RouteView, call: Call) -> Refusal | None:
        """Why the call is refused before any rule is tried, or None."""

    @abc.abstractmethod
    def refusal_as_result(
        self, view: RouteView, call: Call, kind: ErrorKind, message: str, data: Mapping[str, Any]
    ) -> str | None:
        """The body answering a policy refusal of `call` as the protocol's own result, where the route
        asks for that (MCP: a tool result with isError), or None for a JSON-RPC error."""

    @abc.abstractmethod
    def unconditionally_allowed(self, view: RouteView, agent: str, call: Call, jwt: JwtPayloads) -> bool:
        """Whether a grant without conditions lets `agent` (acting for the user of `jwt`) make the call."""

    @abc.abstractmethod
    def rewrite_response(
        self, view: RouteView, agents: tuple[str, ...], jwt: JwtPayloads, body: bytes, content_type: str
    ) -> ResponseRewrite:
        """The response as the caller (proving `agents`, acting for the user of `jwt`) may see it."""

    @property
    @abc.abstractmethod
    def sealing(self) -> IdSealing | None:
        """How the protocol's ids are sealed per owner, or None if it has none to seal."""

    @abc.abstractmethod
    def exchange(self, view: RouteView, sealer: Sealer, agents: tuple[str, ...], jwt: JwtPayloads,
                 headers: Mapping[str, str], metadata: Mapping[str, Any], body: bytes | None) -> Exchange | Refused:  # fmt: skip
        """One request read whole (`body` None: it has none) by the caller proving `agents`, with what the
        protocol filter deframed (`metadata`, namespace → values): refused, or let through (rewritten)
        with its answer's rewriter (ext_proc PURPOSE_EXCHANGE)."""

    @abc.abstractmethod
    def update(self, index: PolicyIndex, running: bool) -> None:
        """Follow a newly published policy index (`running`: background work may start now)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop background work."""
