"""Envoy ext_authz (gRPC `Authorization.Check`) as a thin adapter over `decide.check_request`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format

from xds_server.authz.decide import CheckOutcome, check_request, failed_decision, unproven_caller
from xds_server.core.wire import JWT_METADATA_NAMESPACE, POLICY_SERVICE_SECRET_HEADER, ROUTE_CONTEXT_EXTENSION

if TYPE_CHECKING:
    from xds_server.authz.service import PolicyService
    from xds_server.authz.state import PolicyIndex

log = logging.getLogger(__name__)
_OK, _PERMISSION_DENIED = 0, 7  # google.rpc.Code
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def request_headers(request: external_auth_pb2.CheckRequest) -> dict[str, str]:
    """The request's headers; Envoy sends them with lower-case names."""
    return dict(request.attributes.request.http.headers)


def request_body(request: external_auth_pb2.CheckRequest) -> str:
    http = request.attributes.request.http
    return http.body or http.raw_body.decode("utf-8", errors="replace")


def jwt_payloads(request: external_auth_pb2.CheckRequest) -> dict[str, Any]:
    """What jwt_authn verified: provider name → token payload (empty when no token was verified)."""
    metadata = request.attributes.metadata_context.filter_metadata
    if JWT_METADATA_NAMESPACE not in metadata:
        return {}
    return json_format.MessageToDict(metadata[JWT_METADATA_NAMESPACE])


def to_check_response(outcome: CheckOutcome) -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse()
    if outcome.allowed:
        response.status.code = _OK
        ok = response.ok_response
        ok.SetInParent()
        for name, value in outcome.set_headers.items():
            option = ok.headers.add()
            option.header.key = name
            option.header.value = value
            option.append_action = _OVERWRITE
        ok.headers_to_remove.extend(outcome.remove_headers)
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
    """Decides the requests routed to ext_authz and attaches delegated credentials; every
    answer goes to the decision log (never a credential)."""

    def __init__(self, service: PolicyService) -> None:
        self._service = service

    async def Check(self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext) -> Any:
        extensions: Mapping[str, str] = request.attributes.context_extensions
        self._service.checks[extensions.get(ROUTE_CONTEXT_EXTENSION, "")] += 1
        body = request_body(request)
        if not envoys_call(self._service.index, extensions.get(ROUTE_CONTEXT_EXTENSION, ""), context):
            log.warning("ext_authz: refusing a check without its gateway's policy-service secret")
            outcome = unproven_caller(body)
            self._service.log_decision(outcome.log)
            return to_check_response(outcome)
        try:
            outcome = await check_request(
                self._service.decider,
                route=extensions.get(ROUTE_CONTEXT_EXTENSION, ""),
                headers=request_headers(request),
                body=body,
                jwt_payloads=jwt_payloads(request),
                peer_uri_san=request.attributes.source.principal or None,
            )
        except Exception:  # an error answer would let a failOpen route through: refuse instead
            log.exception("ext_authz: decision failed; refusing")
            outcome = failed_decision(body)
        self._service.log_decision(outcome.log)
        return to_check_response(outcome)


def envoys_call(index: PolicyIndex, route: str, context: grpc.aio.ServicerContext) -> bool:
    """Whether a gRPC call (ext_authz, ext_proc) about `route` may be served: its metadata carries the
    route's gateway's policy-service secret, or that gateway has none (`PolicyIndex.admits`; metadata is
    read only where some gateway has one)."""
    if not index.secrets:  # no gateway has one: nothing to read
        return True
    gateway = index.gateway_of(route)
    # Several values are joined, so that they match nothing.
    values = [str(v) for k, v in (context.invocation_metadata() or ()) if k == POLICY_SERVICE_SECRET_HEADER]
    return index.admits(gateway, ",".join(values) if values else None)
