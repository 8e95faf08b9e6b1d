"""Envoy ext_proc (gRPC `ExternalProcessor.Process`): responses rewritten per caller.

One stream per HTTP request, on the routes whose responses are rewritten
only (MCP: the list methods). Envoy sends the request headers with the
verified JWT payloads (jwt_authn's metadata, forwarded: who is asking, and
for which user), the response headers (content type), then the whole
response body (BUFFERED: such answers are short, and a long-lived stream
never comes here). The route's protocol handler rewrites the body so that
the caller sees only what it may use (MCP: tools, prompts and resources,
and on a guarded backend none that changed since they were pinned).

A JSON or SSE body that cannot be read, or a route the service does not
know, is replaced by a JSON-RPC error (fail closed): passing it on
unfiltered could show what should stay hidden.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import json_format

from xds_server.authz.jsonrpc import error_body
from xds_server.core import errors
from xds_server.core.wire import JWT_METADATA_NAMESPACE, PEER_URI_SAN_ATTRIBUTE, ROUTE_METADATA_KEY

if TYPE_CHECKING:
    from xds_server.authz.service import PolicyService

log = logging.getLogger(__name__)


def header_map(headers: Any) -> dict[str, str]:
    """ext_proc HeaderMap → dict with lower-case names (Envoy fills `raw_value`, older ones `value`)."""
    return {h.key.lower(): h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value for h in headers.headers}


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


class ExtProcServicer(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, service: PolicyService) -> None:
        self._service = service

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        metadata = dict(context.invocation_metadata() or ())
        view = self._service.index.route(str(metadata.get(ROUTE_METADATA_KEY, "")))
        handler = self._service.handlers.get(view.route.kind) if view is not None else None
        agents: tuple[str, ...] = ()
        jwt: dict[str, Any] = {}
        content_type = ""
        request_id: Any = None
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if phase == "request_headers":
                jwt = jwt_payloads(request)
                if view is not None:
                    agents = view.agents_of(header_map(request.request_headers.headers), jwt, peer_uri_san(request))
                yield _continue("request_headers")
            elif phase == "response_headers":
                content_type = header_map(request.response_headers.headers).get("content-type", "")
                yield _continue("response_headers")
            elif phase == "response_body":
                if view is None or handler is None:
                    log.warning("response of a route the policy service does not know; withheld")
                    yield _refuse(502, error_body(request_id, errors.GATEWAY_ERROR,
                                                  "The backend's response could not be filtered, so it is withheld"))  # fmt: skip
                    return
                body = request.response_body.body
                rewrite = handler.rewrite_response(view, agents, jwt, body, content_type)
                if not rewrite.readable and _is_rpc_content(content_type):
                    log.warning("list response from backend %s could not be read; refused", view.name)
                    yield _refuse(502, error_body(request_id, errors.GATEWAY_ERROR,
                                                  "The backend's list response could not be filtered, so it is withheld"))  # fmt: skip
                    return
                yield _replace_body(rewrite.body) if rewrite.body is not None else _continue("response_body")
            elif phase is not None:
                yield _continue(phase)


def _is_rpc_content(content_type: str) -> bool:
    return content_type.startswith(("application/json", "text/event-stream"))
