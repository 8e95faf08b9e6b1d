"""Envoy ext_proc (gRPC `ExternalProcessor.Process`): responses rewritten per caller, ids sealed per owner.

One stream per HTTP request, on the routes that need it only; the gRPC
metadata names the route and the stream's purpose (core/wire.py):

- PURPOSE_RESPONSES (MCP: the list methods): Envoy sends the request headers
  with the verified JWT payloads (who is asking, for which user), the
  response headers (content type), then the whole response body (BUFFERED:
  such answers are short, and a long-lived stream never comes here). The
  route's protocol handler rewrites it so that the caller sees only what it
  may use (MCP: tools, prompts and resources, and on a guarded backend none
  that changed since they were pinned).
- PURPOSE_EXCHANGE (A2A: every request): the request body (BUFFERED) goes to
  the route's protocol handler (`exchange`), which refuses it or lets it
  through (its ids restored), and says how the answer (STREAMED) is rewritten.
- PURPOSE_SEAL / PURPOSE_UNSEAL (MCP: tasks): ids a response creates are
  sealed for the caller; a request naming a sealed id is checked and
  restored, or answered as if the id did not exist (authz/sealed_ids.py).
  The request body comes BUFFERED; the response STREAMED, chunk by chunk,
  each passed on as soon as it is rewritten (Content-Length removed).

A JSON or SSE body that cannot be read, or a route the service does not
know, is replaced by a JSON-RPC error (fail closed): passing it on
unfiltered could show what should stay hidden.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import json_format

from xds_server.authz.ext_authz import envoys_call
from xds_server.authz.jsonrpc import error_body, id_from_metadata, request_id_of
from xds_server.authz.messages import BodyRewriter, is_json, is_sse, why_unreadable
from xds_server.authz.protocols import Exchange, Refused
from xds_server.authz.sealed_ids import NotFound, open_request, owner_of, reseal_stream, seal_stream
from xds_server.core import errors
from xds_server.core.wire import (
    JSONRPC_METADATA_NAMESPACE,
    JWT_METADATA_NAMESPACE,
    PEER_URI_SAN_ATTRIBUTE,
    PURPOSE_EXCHANGE,
    PURPOSE_METADATA_KEY,
    PURPOSE_RESPONSES,
    PURPOSE_UNSEAL,
    ROUTE_METADATA_KEY,
)

if TYPE_CHECKING:
    from xds_server.authz.service import PolicyService
    from xds_server.authz.state import RouteView

log = logging.getLogger(__name__)


def header_map(headers: Any) -> dict[str, str]:
    """ext_proc HeaderMap → dict with lower-case names (Envoy fills `raw_value`, older ones `value`)."""
    return dict(_header_pairs(headers))


def _header_pairs(headers: Any) -> list[tuple[str, str]]:
    """ext_proc HeaderMap → (lower-case name, value) pairs, repeated names kept."""
    return [
        (h.key.lower(), h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value) for h in headers.headers
    ]


def jwt_payloads(request: pb.ProcessingRequest) -> dict[str, Any]:
    """What jwt_authn verified for this request: provider name → token payload ({} without a token)."""
    metadata = request.metadata_context.filter_metadata
    if JWT_METADATA_NAMESPACE not in metadata:
        return {}
    return json_format.MessageToDict(metadata[JWT_METADATA_NAMESPACE])


def peer_uri_san(request: pb.ProcessingRequest) -> str | None:
    """The client certificate's URI SAN, when the filter is configured to send that attribute."""
    for attributes in request.attributes.values():
        value = attributes.fields.get(PEER_URI_SAN_ATTRIBUTE)
        if value is not None and value.WhichOneof("kind") == "string_value" and value.string_value:
            return value.string_value
    return None


def _continue(phase: str) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    getattr(response, phase).SetInParent()
    return response


def _replace_body(new_body: bytes) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    common = response.response_body.response
    common.body_mutation.body = new_body
    # The length changed; Envoy re-frames the body (chunked for HTTP/1.1).
    common.header_mutation.remove_headers.append("content-length")
    return response


def _refuse(status: int, body: str) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = status
    immediate.body = body.encode()
    option = immediate.headers.set_headers.add()
    option.header.key = "content-type"
    option.header.raw_value = b"application/json"
    return response


_FIRST_MESSAGE_S = 5.0  # how long a stream without the secret may take to send its first message
#: The reply to a stream without its gateway's policy-service secret (the request's id is not known yet).
_UNPROVEN = error_body(None, errors.POLICY_SERVICE_UNAVAILABLE, "The policy service refused the request: it does not "
                       "carry its gateway's policy-service secret")  # fmt: skip


class ExtProcServicer(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, service: PolicyService) -> None:
        self._service = service

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        metadata = dict(context.invocation_metadata() or ())
        route = str(metadata.get(ROUTE_METADATA_KEY, ""))
        if not envoys_call(self._service.index, route, context):
            # Answered, not aborted: an aborted stream on a failOpen route would let the answer through
            # unfiltered. The same reply for known and unknown routes (nothing to learn from it).
            log.warning("ext_proc: refusing a stream for route %.100r: no policy-service secret of its gateway "
                        "(or, for a route this service does not know, of any gateway)", route)  # fmt: skip
            try:
                async with asyncio.timeout(_FIRST_MESSAGE_S):  # Envoy sends one at once; others need not wait
                    await anext(aiter(request_iterator))
            except (TimeoutError, StopAsyncIteration):
                return  # nothing asked, nothing answered
            yield _refuse(errors.POLICY_SERVICE_UNAVAILABLE.http_status, _UNPROVEN)
            return
        view = self._service.index.route(route)
        stream = _Stream(self._service, view, str(metadata.get(PURPOSE_METADATA_KEY, PURPOSE_RESPONSES)))
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if phase is None:
                continue
            try:
                response, last = stream.on(phase, request)
            except Exception:  # a bug: refused, never an aborted stream (which a failOpen route lets pass)
                log.exception("ext_proc: a %s message could not be handled; refusing", phase)
                failed = "The gateway could not handle this exchange, so it is refused"
                response, last = _refuse(502, error_body(stream.request_id, errors.GATEWAY_ERROR, failed)), True
            yield response
            if last:
                return


class _Stream:
    """What one ext_proc stream learns as its phases come, and its answer to each."""

    def __init__(self, service: PolicyService, view: RouteView | None, purpose: str) -> None:
        self.service, self.view, self.purpose = service, view, purpose
        handler = service.handlers.get(view.route.kind) if view is not None else None
        self.handler = handler
        self.sealing = handler.sealing if handler is not None else None
        self.agents: tuple[str, ...] = ()
        self.jwt: dict[str, Any] = {}
        self.headers: dict[str, str] = {}
        self.metadata: dict[str, Any] = {}
        self.content_type = ""
        self.request_id: Any = None
        self.shown: dict[str, str] = {}  # the backend's ids → the sealed ids the caller named
        self.streamed: BodyRewriter | None = None
        self.request_seen = False  # this filter saw the request (so the answer may come from the backend)
        self.exchanged: Exchange | None = None  # PURPOSE_EXCHANGE: the request the handler let through

    def on(self, phase: str, request: pb.ProcessingRequest) -> tuple[pb.ProcessingResponse, bool]:
        """The answer to one phase, and whether it ends the stream."""
        if phase == "request_headers":
            self.request_seen = True
            self.jwt = jwt_payloads(request)
            self.metadata = json_format.MessageToDict(request.metadata_context).get("filterMetadata", {})
            self.headers = header_map(request.request_headers.headers)
            # Exact where the body is never seen here (a list's answer); a body seen later says it again.
            self.request_id = id_from_metadata(self.metadata.get(JSONRPC_METADATA_NAMESPACE))
            if self.view is not None:
                # The one agent the request speaks for, as Envoy's identify filter names it (and RBAC allowed).
                agent = self.view.agent_of(self.headers, self.jwt, peer_uri_san(request))
                self.agents = (agent,) if agent is not None else ()
            return _continue(phase), False
        if phase == "request_body":
            if self.purpose == PURPOSE_EXCHANGE:
                return self._exchange(request.request_body.body, "request_body")
            return self._request_body(request.request_body.body)
        if phase == "response_headers":
            pairs = _header_pairs(request.response_headers.headers)
            answer_headers = dict(pairs)
            self.content_type = answer_headers.get("content-type", "")
            if not self.request_seen:
                # Without the request, this is Envoy's own reply to a request an earlier filter refused
                # (RBAC): no request reaches a backend without passing here first, so it holds nothing
                # of a backend's to rewrite or seal.
                return _continue(phase), False
            if not request.response_headers.end_of_stream and answer_headers.get(":status", "").startswith("2"):
                # A successful answer with a body: one the gateway can read as every client does (an error
                # answer, 401 or 404 and their headers, is the client's to see and is not read as a result).
                content_types = [v for k, v in pairs if k == "content-type"]
                encodings = [v for k, v in pairs if k == "content-encoding"]
                why = why_unreadable(content_types, encodings, any_json=self.purpose == PURPOSE_EXCHANGE)
                if why is not None:
                    log.warning("route %s: an answer that %s withheld", self.view and self.view.name, why)
                    return _refuse(502, self.withheld(why)), True
            if self.purpose == PURPOSE_EXCHANGE:
                return self._answer_exchange()
            if self.purpose == PURPOSE_RESPONSES:
                return _continue(phase), False
            return self._start_sealing()
        if phase == "response_body":
            if self.purpose == PURPOSE_RESPONSES:
                return self._rewritten_response(request.response_body.body)
            if self.streamed is None:  # the answer to the headers let it through unchanged
                return _continue(phase), False
            body = request.response_body
            return _stream_body(self.streamed.feed(body.body, body.end_of_stream)), False
        return _continue(phase), False

    def _exchange(self, body: bytes | None, phase: str) -> tuple[pb.ProcessingResponse, bool]:
        """The handler's exchange for the request (`body` None: it has none): refused, or let through."""
        view, handler = self.view, self.handler
        if body is not None:
            self.request_id = request_id_of(body)
        if view is None or handler is None:
            log.warning("request of a route the policy service does not know; refused")
            return _refuse(502, error_body(request_id_of(body or b""), errors.GATEWAY_ERROR,
                                           "The request could not be checked, so it is refused")), True  # fmt: skip
        try:
            outcome = handler.exchange(view, self.service.sealer_for(view), self.agents, self.jwt, self.headers,
                                       self.metadata, body)  # fmt: skip
        except Exception:  # a bug must refuse the request, with its id, not break the stream
            log.exception("exchange failed; refused")
            return _refuse(502, error_body(request_id_of(body or b""), errors.GATEWAY_ERROR,
                                           "The request could not be checked, so it is refused")), True  # fmt: skip
        if isinstance(outcome, Refused):
            return _refuse(outcome.status, outcome.body), True
        self.exchanged = outcome
        if outcome.body is not None:
            return _replace_request_body(outcome.body, {}), False
        return _continue(phase), False

    def _answer_exchange(self) -> tuple[pb.ProcessingResponse, bool]:
        """The answer to the response headers of an exchange: its rewriter set up (a request without a
        body, a GET, is read now)."""
        if self.exchanged is None:
            response, last = self._exchange(None, "response_headers")
            if last or self.exchanged is None:
                return response, True
        self.streamed = self.exchanged.answer(self.content_type)
        response = _without_content_length()
        if self.exchanged.answer_content_type is not None:  # read whole and written anew: say what it is now
            option = response.response_headers.response.header_mutation.set_headers.add()
            option.header.key, option.header.raw_value = "content-type", self.exchanged.answer_content_type.encode()
        return response, False

    def _request_body(self, body: bytes) -> tuple[pb.ProcessingResponse, bool]:
        self.request_id = request_id_of(body)
        if self.purpose != PURPOSE_UNSEAL:
            return _continue("request_body"), False
        view, sealing = self.view, self.sealing
        if view is None or sealing is None:
            log.warning("request of a route the policy service does not know; refused")
            return _refuse(502, error_body(self.request_id, errors.GATEWAY_ERROR,
                                           "The request could not be checked, so it is refused")), True  # fmt: skip
        opened = (open_request(sealing, self.service.sealer_for(view), view, self.agents, self.jwt, body, self.headers)
                  if view.route.decisions.tasks else NotFound(sealing.not_found(self.request_id)))  # fmt: skip
        if isinstance(opened, NotFound):
            self.service.log_decision({"backend": view.name, "agent": self.agents[0] if self.agents else None,
                                       "allowed": False, "reason": "not_owner"})  # fmt: skip
            return _refuse(200, opened.body), True
        self.shown = opened.shown
        return _replace_request_body(opened.body, opened.headers), False

    def _start_sealing(self) -> tuple[pb.ProcessingResponse, bool]:
        """The answer to the response headers of a sealing purpose: the stream rewriter set up."""
        view, sealing = self.view, self.sealing
        if view is None or sealing is None:
            log.warning("response of a route the policy service does not know; withheld")
            return _refuse(502, self.withheld("could not be checked")), True
        unreadable = self.withheld("could not be read").encode()
        if self.purpose == PURPOSE_UNSEAL:
            self.streamed = reseal_stream(sealing, self.shown, self.content_type, unreadable)
            return _without_content_length(), False
        if not view.route.decisions.tasks:
            return _continue("response_headers"), False  # tasks off since Envoy chose this route: nothing to seal
        owner, origin = owner_of(view, self.agents, self.jwt), sealing.origin(self.metadata)
        if owner is None or origin is None:
            log.warning("backend %s: a response to seal ids in came for no known caller or origin", view.name)
            return _refuse(502, self.withheld("could not be checked")), True
        sealer = self.service.sealer_for(view)
        self.streamed = seal_stream(sealing, sealer, view, owner, origin, self.content_type, unreadable)
        return _without_content_length(), False

    def withheld(self, why: str) -> str:
        return error_body(self.request_id, errors.GATEWAY_ERROR, f"The backend's response {why}, so it is withheld")

    def _rewritten_response(self, body: bytes) -> tuple[pb.ProcessingResponse, bool]:
        view, handler = self.view, self.handler
        if view is None or handler is None:
            log.warning("response of a route the policy service does not know; withheld")
            return _refuse(502, self.withheld("could not be filtered")), True
        rewrite = handler.rewrite_response(view, self.agents, self.jwt, body, self.content_type)
        if not rewrite.readable and _is_rpc_content(self.content_type):
            log.warning("list response from backend %s could not be read; refused", view.name)
            return _refuse(502, error_body(self.request_id, errors.GATEWAY_ERROR,
                                           "The backend's list response could not be filtered, so it is withheld")), True  # fmt: skip
        return (_replace_body(rewrite.body) if rewrite.body is not None else _continue("response_body")), False


def _without_content_length() -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    response.response_headers.response.header_mutation.remove_headers.append("content-length")
    return response


def _stream_body(chunk: bytes) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    response.response_body.response.body_mutation.body = chunk
    return response


def _replace_request_body(body: bytes, headers: dict[str, str]) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    common = response.request_body.response
    common.body_mutation.body = body
    for name, value in {**headers, "content-length": str(len(body))}.items():
        option = common.header_mutation.set_headers.add()
        option.header.key = name
        option.header.raw_value = value.encode()
    return response


def _is_rpc_content(content_type: str) -> bool:
    return is_json(content_type) or is_sse(content_type)
