"""The policy service's half of A2A routes (`ProtocolHandler` for routes of kind "a2a").

Every A2A request comes to the service as an exchange (exchange.py): read
strictly, task and context ids opened and sealed per caller, cards
filtered per caller. The calls of conditional rules (`send`, `stream`:
policy/a2a.py) are also decided here (ext_authz), as for MCP tools: the
call's target is its operation, its arguments the message's `metadata`
(what a `when` reads as `args`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from xds_server.authz.a2a.exchange import ExchangeRequest
from xds_server.authz.jsonrpc import error_body
from xds_server.authz.protocols import (
    Call,
    Exchange,
    IdSealing,
    LogDecision,
    MalformedCall,
    NotACall,
    ProtocolHandler,
    Refusal,
    Refused,
    ResponseRewrite,
)
from xds_server.authz.sealing import Sealer
from xds_server.authz.state import PolicyIndex, RouteView
from xds_server.core import errors
from xds_server.core.a2a import METHOD_OPERATION
from xds_server.core.errors import ErrorKind
from xds_server.ir.a2a import A2aAllowsIR, A2aRouteIR
from xds_server.ir.principals import JwtPayloads


class A2aHandler(ProtocolHandler):
    kind: ClassVar[str] = A2aRouteIR.KIND
    noun: ClassVar[str] = "operation"
    denied: ClassVar[ErrorKind] = errors.METHOD_DENIED

    def __init__(self, log_decision: LogDecision) -> None:
        self._log_decision = log_decision

    def parse_call(self, body: str | bytes) -> Call:
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            raise NotACall("the body is not JSON (or nested too deeply)") from None
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            raise NotACall("not a JSON-RPC request")
        operation = METHOD_OPERATION.get(message["method"])
        if operation is None:
            raise NotACall(f"{message['method']!r} is not an A2A method")
        params = message.get("params")
        if not isinstance(params, dict):
            raise MalformedCall("params is not an object")
        the_message = params.get("message")
        metadata = the_message.get("metadata") if isinstance(the_message, dict) else None
        return Call(message.get("id"), operation, metadata if isinstance(metadata, dict) else {})

    def withheld(self, view: RouteView, call: Call) -> Refusal | None:
        return None

    def refusal_as_result(
        self, view: RouteView, call: Call, kind: ErrorKind, message: str, data: Mapping[str, Any]
    ) -> str | None:
        return None

    def unconditionally_allowed(self, view: RouteView, agent: str, call: Call, jwt: JwtPayloads) -> bool:
        return any(isinstance(g.allows, A2aAllowsIR) and call.target in g.allows.operations
                   for g in view.grants_for(agent, jwt))  # fmt: skip

    def rewrite_response(
        self, view: RouteView, agents: tuple[str, ...], jwt: JwtPayloads, body: bytes, content_type: str
    ) -> ResponseRewrite:
        # A2A answers are rewritten in the exchange; a route asking for this is not one of ours: withhold.
        return ResponseRewrite(None, readable=False)

    @property
    def sealing(self) -> IdSealing | None:
        return None  # the exchange seals A2A's ids

    def exchange(self, view: RouteView, sealer: Sealer, agents: tuple[str, ...], jwt: JwtPayloads,
                 headers: Mapping[str, str], metadata: Mapping[str, Any], body: bytes | None) -> Exchange | Refused:  # fmt: skip
        if not isinstance(view.route.protocol, A2aRouteIR):
            return Refused(502, error_body(None, errors.GATEWAY_ERROR, "The request could not be checked, so it is "
                                           "refused"), "not_a2a_route")  # fmt: skip
        request = ExchangeRequest(view, sealer, agents, jwt, headers)
        outcome = request.post(body, metadata) if body is not None else request.get(headers)
        if isinstance(outcome, Refused):
            self._log_decision({"backend": view.name, "agent": agents[0] if agents else None, "allowed": False,
                                "reason": outcome.reason})  # fmt: skip
        return outcome

    def update(self, index: PolicyIndex, running: bool) -> None:
        pass  # nothing of its own to follow

    async def stop(self) -> None:
        pass
