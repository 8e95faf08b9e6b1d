"""Envoy ext_authz (gRPC `Authorization.Check`) as a thin adapter over `check.check_tool_call`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from xds_server.authz.check import CheckOutcome, check_tool_call

if TYPE_CHECKING:
    from xds_server.authz.service import PolicyService

log = logging.getLogger(__name__)
_OK, _PERMISSION_DENIED = 0, 7  # google.rpc.Code


def request_headers(request: external_auth_pb2.CheckRequest) -> dict[str, str]:
    """The request's headers; Envoy sends them with lower-case names."""
    return dict(request.attributes.request.http.headers)


def request_body(request: external_auth_pb2.CheckRequest) -> str:
    http = request.attributes.request.http
    return http.body or http.raw_body.decode("utf-8", errors="replace")


def to_check_response(outcome: CheckOutcome) -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse()
    if outcome.allowed:
        response.status.code = _OK
        response.ok_response.SetInParent()
        return response
    response.status.code = _PERMISSION_DENIED
    denied = response.denied_response
    denied.status.code = outcome.http_status  # envoy.type.v3.StatusCode values are the HTTP codes
    denied.body = outcome.body
    for name, value in {"content-type": "application/json", **outcome.headers}.items():
        option = denied.headers.add()
        option.header.key = name
        option.header.value = value
    return response


class ExtAuthzServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Decides `tools/call`s routed to ext_authz; every decision goes to the decision log."""

    def __init__(self, service: PolicyService) -> None:
        self._service = service

    async def Check(self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext) -> Any:
        backend: Mapping[str, str] = request.attributes.context_extensions
        outcome = check_tool_call(
            self._service.index,
            self._service.engine,
            self._service.guard,
            backend=backend.get("backend", ""),
            headers=request_headers(request),
            body=request_body(request),
        )
        self._service.log_decision(outcome.log)
        return to_check_response(outcome)
