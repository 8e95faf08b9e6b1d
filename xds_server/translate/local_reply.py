"""Envoy's own replies → JSON-RPC error objects (HCM `local_reply_config`).

Every reply Envoy generates itself (RBAC denial, protocol filter rejection, no
route, upstream failure) is rewritten into `{"jsonrpc": "2.0", "id": <the
request's id, with its type>, "error": {code, message, data}}`, so clients
report the gateway's code and reason instead of a bare `RBAC: access denied`.

Every policy refusal (an error kind whose own HTTP status is 403) goes out
with the Gateway's `denials.httpStatus`: 200 by default, because MCP clients
read a 403 as an authentication problem and hide the JSON-RPC error.

Mappers are tried in order and the first match wins, so the order goes from
the most specific to the catch-all:

    1. the OAuth protected-resource metadata documents (not errors)
    2. replies that are JSON already (the protocol filter's own JSON-RPC
       errors, the policy service's denials): kept as they are, a policy
       refusal with the gateway's denial status (`denials.httpStatus`, 200 by
       default) or 200 where it is answered as a tool result
    3. the policy service could not be asked; an ambiguous identity (identity.py);
       HTTP Envoy could not parse and headers over the limits (its codec's
       details; no id can be read)
    4. the protocol filter's refusals (protocol translator: `request_rejections`)
    5. jwt_authn's refusals (with the OAuth challenge on routes with `auth`)
    6. a path no route serves (refused by the listener's RBAC for want of a route);
       a call a native rule covers whose condition failed (RBAC's shadow rules
       name the rule, translate/rbac.py); RBAC denials, per way of recognising
       a known agent (ir/principals.py), what it was refused (protocol
       translator: `denials`); then "unknown agent"
    7. by status: no route, too large, timeouts (headers, whole request), overload
       (the overload manager's `overload` detail), upstream timeout, upstream
       failure, other

The protocol filter labels its rejections in its metadata; jwt_authn's say
why in the response code details (`jwt_authn_access_denied{Jwt_is_expired}`).
Other denials are told apart by who is asking (a known agent or not) and
what was requested. Mappers apply to the
whole listener, so what is per route (metadata documents, challenges) is
scoped by route name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from xds_server.core import errors
from xds_server.core.wire import REPLY_STATUS_HEADER
from xds_server.ir.types import GatewayIR, ListenerIR
from xds_server.translate import identity, oauth, virtual_mcp
from xds_server.translate.cel import IDENTIFIED_AGENT_KEY, RBAC_NAMESPACE
from xds_server.translate.names import CONDITION_RULE_KEY
from xds_server.translate.protocols import protocols_of, translator_for
from xds_server.translate.protocols.base import ProtocolTranslator
from xds_server.translate.replies import all_of, cel_filter, mapper, metadata_present, route_is, status_is
from xds_server.translate.request_id import exact_ids

BACKEND = "%ROUTE_NAME%"
_JWT_REFUSED = "response.code_details.startsWith('jwt_authn_access_denied')"
_JWT_MISSING = "response.code_details == 'jwt_authn_access_denied{Jwt_is_missing}'"


def _reply_is_json() -> dict[str, Any]:
    """True when the reply is already JSON: the protocol filter's and the policy service's JSON-RPC errors."""
    return cel_filter("response.headers['content-type'] == 'application/json'")


def _policy_service_failed() -> dict[str, Any]:
    """ext_authz / ext_proc could not get an answer from the policy service."""
    return cel_filter(
        "response.code_details.startsWith('ext_authz_error') || response.code_details.startsWith('ext_proc')"
    )


def _overwrite(header: str, value: str) -> dict[str, Any]:
    return {"header": {"key": header, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _metadata_documents(gateway: GatewayIR) -> list[dict[str, Any]]:
    """The bodies of the protected-resource metadata routes (direct responses, status 200 kept)."""
    return [
        {
            "filter": cel_filter(route_is(oauth.metadata_route_name(b))),
            "body_format_override": {"content_type": "application/json", "json_format": oauth.document(gateway, b)},
        }
        for b in oauth.auth_backends(gateway)
    ]


def _token_refusals(gateway: GatewayIR, request_id: str) -> list[dict[str, Any]]:
    """jwt_authn's refusals (401, or 403 for an audience it does not accept) → 401 JSON-RPC errors.

    On a route with `auth` they carry the OAuth challenge.
    """
    if not gateway.identity.jwt_providers:
        return []
    invalid = ("Invalid credentials: %LOCAL_REPLY_BODY% (the token was refused; send a valid one, or none where "
               "none is required)")  # fmt: skip
    mappers = []
    for backend in oauth.auth_backends(gateway):
        route, url = route_is(backend.name), oauth.metadata_url(backend)
        missing = mapper(cel_filter(f"{route} && {_JWT_MISSING}"), errors.MISSING_CREDENTIALS,
                         f"Authentication required: backend '{BACKEND}' needs a user token (Authorization: Bearer); "
                         f"where to get one is described at {url}", request_id, backend=BACKEND,
                         resourceMetadata=url)  # fmt: skip
        missing["headers_to_add"] = [_overwrite("www-authenticate", oauth.challenge(backend, invalid_token=False))]
        refused = mapper(cel_filter(f"{route} && {_JWT_REFUSED}"), errors.INVALID_CREDENTIALS, invalid, request_id,
                         detail="%LOCAL_REPLY_BODY%", backend=BACKEND, resourceMetadata=url)  # fmt: skip
        refused["headers_to_add"] = [_overwrite("www-authenticate", oauth.challenge(backend, invalid_token=True))]
        mappers += [missing, refused]
    mappers.append(mapper(cel_filter(_JWT_REFUSED), errors.INVALID_CREDENTIALS, invalid, request_id,
                          detail="%LOCAL_REPLY_BODY%", backend=BACKEND))  # fmt: skip
    return mappers


def _denials(gateway: GatewayIR, protocol: ProtocolTranslator) -> list[dict[str, Any]]:
    """403 mappers of one protocol: a native rule's failed condition, and what a known agent was refused."""
    denied = status_is(403)
    # RBAC refused a call that a native rule covers (its shadow twin matched): that rule's condition failed.
    covered = metadata_present(RBAC_NAMESPACE, CONDITION_RULE_KEY)
    # The identify filter named an agent (translate/identity.py): a known caller RBAC refused. The same
    # principals as RBAC's, so "known" here is exactly what RBAC recognised; anything else is unknown.
    known = metadata_present(RBAC_NAMESPACE, IDENTIFIED_AGENT_KEY)
    return [*protocol.condition_denials(gateway, all_of(denied, covered)),
            *protocol.denials(gateway, all_of(denied, known))]  # fmt: skip


# Why Envoy could not get an answer from the backend, by its response code details, in
# plain words. Refused, closed and connect-timeout details are verified against Envoy 1.40
# (tests/e2e/test_backend_failures.py); the last two are Envoy's documented details for
# cases the gateway cannot produce yet (no health checks, no circuit breaker settings).
_UPSTREAM_FAILURES = (
    ("response.code_details.contains('Connection_refused')", "connection refused by %UPSTREAM_HOST%"),
    ("response.code_details.contains('connection_timeout')", "connecting to %UPSTREAM_HOST% timed out"),
    ("response.code_details.contains('connection_termination') || response.code_details.contains('remote_reset')",
     "%UPSTREAM_HOST% closed the connection before answering"),
    ("response.code_details == 'no_healthy_upstream'", "no endpoint of it is healthy"),
    ("response.code_details.contains('overflow')", "too many requests to it at once (the gateway's circuit breaker)"),
)  # fmt: skip


def _upstream_failures(request_id: str) -> list[dict[str, Any]]:
    """5xx replies Envoy made because the backend gave no answer: what happened, in plain words;
    Envoy's own detail and the endpoint in `data`."""
    data = {"backend": BACKEND, "endpoint": "%UPSTREAM_HOST%", "detail": "%RESPONSE_CODE_DETAILS%"}
    failed = status_is(500, "GE")
    timeout = mapper(status_is(504), errors.BACKEND_TIMEOUT,
                     f"Backend '{BACKEND}' did not answer in time (its request timeout passed waiting for "
                     "%UPSTREAM_HOST%)", request_id, keep_status=False, **data)  # fmt: skip
    causes = [
        mapper(all_of(failed, cel_filter(cel)), errors.BACKEND_UNAVAILABLE, f"Backend '{BACKEND}' is unavailable: {why}",
               request_id, keep_status=True, **data)
        for cel, why in _UPSTREAM_FAILURES
    ]  # fmt: skip
    other = mapper(failed, errors.BACKEND_UNAVAILABLE,
                   f"Backend '{BACKEND}' is unavailable: the gateway got no answer from it "
                   "(Envoy's detail: %RESPONSE_CODE_DETAILS%)", request_id, keep_status=True, **data)  # fmt: skip
    return [timeout, *causes, other]


def _malformed_http(listener: ListenerIR, request_id: str) -> list[dict[str, Any]]:
    """Requests Envoy's HTTP/1 codec could not parse: nothing was deframed, so the id comes out null."""
    kind = errors.MALFORMED_HTTP
    too_large = ("response.code_details == 'http1.headers_too_large' || "
                 "response.code_details == 'http1.too_many_headers'")  # fmt: skip
    return [
        mapper(cel_filter(too_large), errors.HEADERS_TOO_LARGE,
               f"Request headers too large: the gateway accepts at most {listener.max_headers} headers and "
               f"{listener.max_request_headers_kib} KiB of them", request_id, keep_status=True,
               detail="%RESPONSE_CODE_DETAILS%"),
        mapper(cel_filter("response.code_details == 'low_version'"), kind,
               "HTTP/1.0 is not supported: send HTTP/1.1 or HTTP/2", request_id, keep_status=True,
               detail="%RESPONSE_CODE_DETAILS%"),
        mapper(cel_filter("response.code_details.startsWith('http1.')"), kind,
               "Malformed HTTP request: Envoy could not parse it, and nothing was forwarded", request_id,
               keep_status=True, detail="%RESPONSE_CODE_DETAILS%"),
    ]  # fmt: skip


def _timeouts(listener: ListenerIR, request_id: str) -> list[dict[str, Any]]:
    """408s: the headers or the whole request did not arrive in time (Envoy's details tell which);
    any other 408 (a stream idle while the request is still arriving) in general words."""
    kind = errors.REQUEST_TIMEOUT
    return [
        mapper(cel_filter("response.code_details == 'request_header_timeout'"), kind,
               f"Request timeout: the request's headers did not arrive within "
               f"{listener.request_headers_timeout_ms / 1000:g} s; the connection is closed", request_id,
               keep_status=True),
        mapper(cel_filter("response.code_details == 'request_overall_timeout'"), kind,
               f"Request timeout: the whole request did not arrive within "
               f"{listener.request_receive_timeout_ms / 1000:g} s; the connection is closed", request_id,
               keep_status=True),
        mapper(status_is(408), kind, "Request timeout: the request stopped arriving before it was complete",
               request_id, keep_status=True, detail="%RESPONSE_CODE_DETAILS%"),
    ]  # fmt: skip


Segment = tuple[list[dict[str, Any]], str]  # mappers, and the protocol's request-id format they echo


class _Protocols:
    """The protocols of a gateway, each one's mappers scoped to its own routes when there are several
    (each filter's refusals and each protocol's denials read its own metadata and name its own things)."""

    def __init__(self, gateway: GatewayIR) -> None:
        self.gateway = gateway
        self.all = protocols_of(gateway)
        self.first = self.all[0]

    def each(self, part: Callable[[ProtocolTranslator], list[dict[str, Any]]]) -> list[Segment]:
        return [(self._scoped(p, part(p)), p.request_id) for p in self.all]

    def _scoped(self, protocol: ProtocolTranslator, mappers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(self.all) == 1:
            return mappers
        names = ", ".join(json.dumps(r.name) for r in self.gateway.routes if translator_for(r) is protocol)
        if not names:
            return []
        mine = cel_filter(f"xds.route_name in [{names}]")
        return [m | {"filter": all_of(mine, m["filter"])} for m in mappers]

    @property
    def nouns(self) -> str:
        return " or ".join(p.noun for p in self.all)


def _answered_already(gateway: GatewayIR, protocols: list[ProtocolTranslator]) -> list[dict[str, Any]]:
    """Replies that are JSON already (the protocol filter's errors, the policy service's answers) are
    kept, with the status a policy refusal (403) goes out with: 200 where the protocol answers it
    as a result of the call (the policy service wrote it so), else the gateway's denial status."""
    json_reply, refused = _reply_is_json(), status_is(403)
    # A refusal with a 5xx status came over HTTP as 403 (core/wire.py REPLY_STATUS_HEADER): restore it.
    mappers: list[dict[str, Any]] = [
        {"filter": all_of(json_reply, cel_filter(f"response.headers['{REPLY_STATUS_HEADER}'] == '{status}'")),
         "status_code": status}
        for status in sorted({k.http_status for k in errors.CATALOGUE if k.http_status >= 500})
    ] if gateway.ext_authz_http is not None else []  # fmt: skip
    for protocol in protocols:
        as_results = protocol.refusals_as_results(gateway)
        if as_results is not None:
            mappers.append({"filter": all_of(json_reply, refused, as_results), "status_code": 200})
    if gateway.denial_status != 403:
        mappers.append({"filter": all_of(json_reply, refused), "status_code": gateway.denial_status})
    return [*mappers, {"filter": json_reply}]


def _with_denial_status(mappers: list[dict[str, Any]], status: int) -> list[dict[str, Any]]:
    """Mappers answering a policy refusal (`errors.is_policy_refusal`: an error kind whose own
    status is 403) with `status`."""
    return [m | {"status_code": status} if m.get("status_code") == 403 else m for m in mappers]


def local_reply_config(gateway: GatewayIR) -> dict[str, Any]:
    """The HCM `local_reply_config` for `gateway`."""
    protocols = _Protocols(gateway)
    # Replies of no protocol in particular fall back to the first one's id (json_to_metadata reads it
    # for every protocol, request_id.py: the fallback is for bodies it could not read).
    request_id = protocols.first.request_id
    limit = gateway.listener.max_request_body_bytes
    wrong_path = f"No {protocols.nouns} is served at path '%REQ(:path)%'"

    def neutral(*mappers: dict[str, Any]) -> Segment:
        return list(mappers), request_id

    segments: list[Segment] = [
        neutral(
            *_metadata_documents(gateway),
            *_answered_already(gateway, protocols.all),
            mapper(_policy_service_failed(), errors.POLICY_SERVICE_UNAVAILABLE,
                   "Policy service unavailable: this call needs a policy decision and none could be had "
                   "(the gateway fails closed)", request_id, backend=BACKEND),
            *identity.ambiguity_reply(gateway, request_id),
            *_malformed_http(gateway.listener, request_id),
        ),
        *protocols.each(lambda p: p.request_rejections(gateway)),
        neutral(
            *_token_refusals(gateway, request_id),
            # No scope names the path, so there is no route and the listener's RBAC refused it: a wrong path.
            mapper(all_of(status_is(403), cel_filter("!has(xds.route_name)")), errors.NO_BACKEND, wrong_path,
                   request_id),
        ),
        *protocols.each(lambda p: _denials(gateway, p)),
        neutral(
            mapper(status_is(403), errors.UNKNOWN_AGENT,
                   "Unknown agent: the request carries no identity of an agent known to this gateway", request_id),
            *_timeouts(gateway.listener, request_id),
            mapper(cel_filter("response.code_details == 'overload'"), errors.OVERLOADED,
                   "Gateway overloaded: Envoy is close to its memory limit and refuses new requests for now; "
                   "retry later", request_id, keep_status=True),
            mapper(status_is(404), errors.NO_BACKEND, wrong_path, request_id),
            mapper(status_is(413), errors.TOO_LARGE,
                   f"Request too large: the body exceeds the gateway's limit of {limit} bytes", request_id),
        ),
        *protocols.each(lambda p: p.lost_sessions(p.request_id)),
        neutral(
            # A discovered filter (translate/filters.py) whose configuration never arrived or was refused:
            # Envoy refuses the request itself (500, flag NFCF: no filter config found) and says no more.
            mapper({"response_flag_filter": {"flags": ["NFCF"]}}, errors.GATEWAY_ERROR,
                   "Gateway not ready: a filter's configuration has not arrived from the control plane (or Envoy "
                   "refused it; see `agentxds status`), so the gateway refuses every call", request_id,
                   keep_status=True),
            *virtual_mcp.member_failures(gateway, request_id),
            *_upstream_failures(request_id),
            mapper(status_is(400, "GE"), errors.GATEWAY_ERROR, "Gateway error %RESPONSE_CODE%: %LOCAL_REPLY_BODY%",
                   request_id, keep_status=True),
        ),
    ]  # fmt: skip
    return {"mappers": [m for mappers, rid in segments
                        for m in exact_ids(_with_denial_status(mappers, gateway.denial_status), rid)]}  # fmt: skip
