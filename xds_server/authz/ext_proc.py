"""Envoy ext_proc (gRPC `ExternalProcessor.Process`): list responses filtered per caller.

One stream per HTTP request, on the list routes only. Envoy sends the
request headers with the verified JWT payloads (jwt_authn's metadata,
forwarded: who is asking, and for which user), the response headers
(content type), then the whole response body (BUFFERED: list answers are
short, and the long-lived GET stream never comes here). The body is
rewritten so that the caller sees only the tools, prompts and resources it
may use (acting for that user), and, on a guarded backend, none that changed
since they were pinned.

A JSON or SSE body that cannot be read is replaced by a JSON-RPC error
(fail closed): passing it on unfiltered could show what should stay hidden.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import json_format

from xds_server.authz.jsonrpc import error_body
from xds_server.authz.mcp.listing import rewrite_list_response
from xds_server.authz.state import BackendView, JwtPayloads
from xds_server.core import errors
from xds_server.translate.policy_service import BACKEND_METADATA_KEY
from xds_server.translate.rbac import JWT_METADATA_NAMESPACE

PEER_URI_SAN_ATTRIBUTE = "connection.uri_san_peer_certificate"

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


class ListFilter:
    """Decides what one caller keeps of one list response."""

    def __init__(self, service: PolicyService, view: BackendView | None, agents: tuple[str, ...],
                 jwt: JwtPayloads | None = None) -> None:  # fmt: skip
        self._service = service
        self._view = view
        self._agents = agents  # every agent the request proves (RBAC allows what any of them may)
        self._jwt = jwt or {}

    def rewrite(self, body: bytes, content_type: str) -> tuple[bytes | None, bool]:
        """(new body or None if unchanged, whether the body could be read)."""
        view, agents, jwt = self._view, self._agents, self._jwt
        guard = view.backend.tool_guard if view is not None else None

        def keep(kind: str, item: Mapping[str, Any]) -> bool:
            if view is None or not agents:
                return False
            name = _item_name(kind, item)
            if name is None or not any(view.may_use(a, kind, name, jwt) for a in agents):
                return False
            if kind == "tools" and guard is not None:
                verdict = self._service.guard.observe(view.backend.name, [item], guard).get(name)
                return verdict is None or verdict.usable
            return True

        result = rewrite_list_response(body, content_type, keep)
        if result.removed:
            self._service.log_decision({"backend": view.backend.name if view else None,
                                        "agent": agents[0] if agents else None, "user": _user_of(view, jwt),
                                        "list": True, "hidden": list(result.removed)})  # fmt: skip
        return result.body, not result.parse_failed


def _user_of(view: BackendView | None, jwt: JwtPayloads) -> str | None:
    """The `sub` of the user, for the decision log: from the backend's user provider, else any verified token."""
    providers = [view.backend.auth.provider] if view is not None and view.backend.auth is not None else sorted(jwt)
    for provider in providers:
        payload = jwt.get(provider)
        if isinstance(payload, Mapping) and isinstance(payload.get("sub"), str):
            return str(payload["sub"])
    return None


def _item_name(kind: str, item: Mapping[str, Any]) -> str | None:
    from xds_server.authz.mcp.listing import item_name

    name = item_name(kind, item)
    return name if isinstance(name, str) else None


class ExtProcServicer(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, service: PolicyService) -> None:
        self._service = service

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        metadata = dict(context.invocation_metadata() or ())
        view = self._service.index.backend(str(metadata.get(BACKEND_METADATA_KEY, "")))
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
                body = request.response_body.body
                new_body, readable = ListFilter(self._service, view, agents, jwt).rewrite(body, content_type)
                if not readable and _is_rpc_content(content_type):
                    log.warning("list response from backend %s could not be read; refused",
                                view.backend.name if view else "?")  # fmt: skip
                    yield _refuse(502, error_body(request_id, errors.GATEWAY_ERROR,
                                                  "The backend's list response could not be filtered, so it is withheld"))  # fmt: skip
                    return
                yield _replace_body(new_body) if new_body is not None else _continue("response_body")
            elif phase is not None:
                yield _continue(phase)


def _is_rpc_content(content_type: str) -> bool:
    return content_type.startswith(("application/json", "text/event-stream"))
