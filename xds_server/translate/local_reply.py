"""Envoy's own replies → JSON-RPC error objects (HCM `local_reply_config`).

Every reply Envoy generates itself (RBAC denial, MCP filter rejection, no
route, upstream failure) is rewritten into `{"jsonrpc": "2.0", "id": <the
request's id, with its type>, "error": {code, message, data}}`, so MCP clients
report the gateway's code and reason instead of a bare `RBAC: access denied`.

Mappers are tried in order and the first match wins, so the order below goes
from the most specific to the catch-all. The MCP filter labels each of its
rejections in metadata `envoy.filters.http.mcp: status`; jwt_authn's say why
in the response code details (`jwt_authn_access_denied{Jwt_is_expired}`).
RBAC's own metadata is not visible here, so denials are told apart by who
is asking (a known agent or not, `caller_sources`) and what was requested.

Two kinds of reply are not errors: the OAuth protected-resource metadata
documents (direct responses whose JSON body is built here, because it names
the request's own host), and the challenge header that goes with a 401 on a
backend with `auth` (see `oauth`). Mappers apply to the whole listener, so
those are scoped by route name.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from xds_server.core import errors
from xds_server.core.errors import ErrorKind
from xds_server.core.secrets import read_secret
from xds_server.ir.types import ApiKeyPrincipal, GatewayIR, HeaderPrincipal, JwtPrincipal, SpiffePrincipal
from xds_server.translate import oauth
from xds_server.translate.names import MCP_METADATA_NAMESPACE
from xds_server.translate.oauth import literal
from xds_server.translate.proto import typed
from xds_server.translate.rbac import JWT_METADATA_NAMESPACE, RESOURCE_METHODS

_REQUEST_ID = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:id)%"
_METHOD = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:method)%"
_TOOL = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:params:name)%"
_URI = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:params:uri)%"
_BACKEND = "%ROUTE_NAME%"


def _status_is(code: int, op: str = "EQ") -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {"op": op, "value": {"default_value": code, "runtime_key": f"agentxds.local_reply.{code}"}}
        }
    }


def _mcp_metadata_is(key: str, *values: str) -> dict[str, Any]:
    matchers = [{"string_match": {"exact": v}} for v in values]
    value = matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}
    return {
        "metadata_filter": {
            "matcher": {"filter": MCP_METADATA_NAMESPACE, "path": [{"key": key}], "value": value},
            "match_if_key_not_found": False,
        }
    }


def _cel(expression: str) -> dict[str, Any]:
    """An access-log filter evaluating a CEL expression (natively, in Envoy)."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": typed("envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                                  {"expression": expression}),
        }
    }  # fmt: skip


def _reply_is_json() -> dict[str, Any]:
    """True when the reply is already JSON: the MCP filter's and the policy service's JSON-RPC errors."""
    return _cel("response.headers['content-type'] == 'application/json'")


def _policy_service_failed() -> dict[str, Any]:
    """ext_authz / ext_proc could not get an answer from the policy service."""
    return _cel("response.code_details.startsWith('ext_authz_error') || response.code_details.startsWith('ext_proc')")


def _all(*filters: dict[str, Any]) -> dict[str, Any]:
    flat = [f for x in filters for f in (x["and_filter"]["filters"] if "and_filter" in x else [x])]
    return flat[0] if len(flat) == 1 else {"and_filter": {"filters": flat}}


def _mapper(
    when: dict[str, Any], kind: ErrorKind, message: str, *, keep_status: bool = False, **data: str
) -> dict[str, Any]:
    """A mapper answering `kind`; `keep_status` leaves Envoy's HTTP status as it was (catch-alls)."""
    mapper: dict[str, Any] = {"filter": when}
    if not keep_status:
        mapper["status_code"] = kind.http_status
    return mapper | {
        "body_format_override": {
            "content_type": "application/json",
            "json_format": {
                "jsonrpc": "2.0",
                "id": _REQUEST_ID,
                "error": {"code": kind.code, "message": message, "data": {"reason": kind.reason, **data}},
            },
        },
    }


# ---------------------------------------------------------------- who is calling


@dataclass(frozen=True)
class CallerSource:
    """A way the gateway recognises known agents: a filter true when the request proves one of them,
    and how a message names the caller (a format string: the identity's value, or the agent's name)."""

    when: dict[str, Any]
    name: str


def _header_is(header: str, values: list[str]) -> dict[str, Any]:
    regex = "^(" + "|".join(re.escape(v) for v in values) + ")$"
    return {"header_filter": {"header": {"name": header, "string_match": {"safe_regex": {"regex": regex}}}}}


def _jwt_claim_is(provider: str, claim: str, values: list[str]) -> dict[str, Any]:
    matchers = [{"string_match": {"exact": v}} for v in values]
    value = matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}
    return {
        "metadata_filter": {
            "matcher": {"filter": JWT_METADATA_NAMESPACE, "path": [{"key": provider}, {"key": claim}], "value": value},
            "match_if_key_not_found": False,
        }
    }


def _formattable(key: str) -> bool:
    """Whether `key` can be a step of a %DYNAMIC_METADATA(ns:a:b)% path."""
    return not any(c in key for c in ":%()")


def caller_sources(gateway: GatewayIR) -> list[CallerSource]:
    """Every way a request can prove a known agent, exactly as the RBAC principals check it.

    RBAC denials do not say which agent was recognised (its metadata is not
    set on a denial), so the local replies tell "no known agent" from "a
    known agent that may not do this" by checking the principals again.
    Principals of one kind share one filter and name the caller by the
    identity's value; an API key (never shown) or a claim that cannot be put
    in a format string names the agent instead.
    """
    headers: dict[str, list[str]] = defaultdict(list)
    claims: dict[tuple[str, str], list[str]] = defaultdict(list)
    spiffe: list[str] = []
    named: list[CallerSource] = []
    for agent in gateway.agents:
        for p in agent.principals:
            if isinstance(p, HeaderPrincipal):
                headers[p.header].append(p.value)
            elif isinstance(p, JwtPrincipal) and _formattable(p.claim):
                claims[(p.provider, p.claim)].append(p.value)
            elif isinstance(p, JwtPrincipal):
                named.append(CallerSource(_jwt_claim_is(p.provider, p.claim, [p.value]), literal(agent.name)))
            elif isinstance(p, SpiffePrincipal):
                spiffe.append(p.spiffe_id)
            elif isinstance(p, ApiKeyPrincipal):
                key = read_secret(p.key_env, p.key_file, what=f"API key ({p.key_env or p.key_file})")
                when = {"header_filter": {"header": {"name": p.header, "string_match": {"exact": key}}}}
                named.append(CallerSource(when, literal(agent.name)))
    sources = [CallerSource(_header_is(h, sorted(set(v))), f"%REQ({h})%") for h, v in sorted(headers.items())]
    sources += [
        CallerSource(_jwt_claim_is(provider, claim, sorted(set(v))),
                     f"%DYNAMIC_METADATA({JWT_METADATA_NAMESPACE}:{provider}:{claim})%")
        for (provider, claim), v in sorted(claims.items())
    ]  # fmt: skip
    if spiffe:
        ids = ", ".join(json.dumps(i) for i in sorted(set(spiffe)))
        sources.append(
            CallerSource(_cel(f"connection.uri_san_peer_certificate in [{ids}]"), "%DOWNSTREAM_PEER_URI_SAN%")
        )
    return sources + named


def _denials(gateway: GatewayIR) -> list[dict[str, Any]]:
    """403 mappers: per way of recognising a known agent, what it was refused; then "unknown agent"."""
    denied = _status_is(403)
    mappers = []
    for source in caller_sources(gateway):
        caller, known = source.name, _all(denied, source.when)
        mappers += [
            _mapper(_all(known, _mcp_metadata_is("method", "tools/call")), errors.TOOL_DENIED,
                    f"Tool '{_TOOL}' is not allowed for agent '{caller}' on backend '{_BACKEND}'",
                    tool=_TOOL, backend=_BACKEND),
            _mapper(_all(known, _mcp_metadata_is("method", *RESOURCE_METHODS)), errors.RESOURCE_DENIED,
                    f"Resource '{_URI}' is not allowed for agent '{caller}' on backend '{_BACKEND}'",
                    resource=_URI, backend=_BACKEND),
            _mapper(_all(known, _mcp_metadata_is("method", "prompts/get")), errors.PROMPT_DENIED,
                    f"Prompt '{_TOOL}' is not allowed for agent '{caller}' on backend '{_BACKEND}'",
                    prompt=_TOOL, backend=_BACKEND),
            _mapper(known, errors.METHOD_DENIED,
                    f"Method '{_METHOD}' (HTTP %REQ(:method)%) is not allowed for agent '{caller}' on backend "
                    f"'{_BACKEND}': the agent has no grant there, or the method is not allowed through the gateway",
                    method=_METHOD, backend=_BACKEND),
        ]  # fmt: skip
    mappers.append(_mapper(denied, errors.UNKNOWN_AGENT,
                           "Unknown agent: the request carries no identity of an agent known to this gateway"))  # fmt: skip
    return mappers


# ---------------------------------------------------------------- tokens and the MCP authorization spec


_JWT_REFUSED = "response.code_details.startsWith('jwt_authn_access_denied')"
_JWT_MISSING = "response.code_details == 'jwt_authn_access_denied{Jwt_is_missing}'"


def _route_is(name: str) -> str:
    return f"xds.route_name == {json.dumps(name)}"


def _overwrite(header: str, value: str) -> dict[str, Any]:
    return {"header": {"key": header, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _metadata_documents(gateway: GatewayIR) -> list[dict[str, Any]]:
    """The bodies of the protected-resource metadata routes (direct responses, status 200 kept)."""
    return [
        {
            "filter": _cel(_route_is(oauth.metadata_route_name(b))),
            "body_format_override": {"content_type": "application/json", "json_format": oauth.document(gateway, b)},
        }
        for b in oauth.auth_backends(gateway)
    ]


def _token_refusals(gateway: GatewayIR) -> list[dict[str, Any]]:
    """jwt_authn's refusals (401, or 403 for an audience it does not accept) → 401 JSON-RPC errors.

    On a backend with `auth` they carry the MCP authorization challenge.
    """
    if not gateway.identity.jwt_providers:
        return []
    invalid = ("Invalid credentials: %LOCAL_REPLY_BODY% (the token was refused; send a valid one, or none where "
               "none is required)")  # fmt: skip
    mappers = []
    for backend in oauth.auth_backends(gateway):
        route, url = _route_is(backend.name), oauth.metadata_url(backend)
        missing = _mapper(_cel(f"{route} && {_JWT_MISSING}"), errors.MISSING_CREDENTIALS,
                          f"Authentication required: backend '{_BACKEND}' needs a user token (Authorization: Bearer); "
                          f"where to get one is described at {url}", backend=_BACKEND, resourceMetadata=url)  # fmt: skip
        missing["headers_to_add"] = [_overwrite("www-authenticate", oauth.challenge(backend, invalid_token=False))]
        refused = _mapper(_cel(f"{route} && {_JWT_REFUSED}"), errors.INVALID_CREDENTIALS, invalid,
                          detail="%LOCAL_REPLY_BODY%", backend=_BACKEND, resourceMetadata=url)  # fmt: skip
        refused["headers_to_add"] = [_overwrite("www-authenticate", oauth.challenge(backend, invalid_token=True))]
        mappers += [missing, refused]
    mappers.append(_mapper(_cel(_JWT_REFUSED), errors.INVALID_CREDENTIALS, invalid,
                           detail="%LOCAL_REPLY_BODY%", backend=_BACKEND))  # fmt: skip
    return mappers


def local_reply_config(gateway: GatewayIR) -> dict[str, Any]:
    """The HCM `local_reply_config` for `gateway`."""
    limit = gateway.max_request_body_bytes
    mappers = [
        # Not errors: the OAuth protected-resource metadata documents.
        *_metadata_documents(gateway),
        # Replies that are JSON-RPC errors already keep their body: the MCP
        # filter's own (2026-07-28 header/body mismatch -32020, missing _meta
        # -32602) and the policy service's denials.
        {"filter": _reply_is_json()},
        _mapper(
            _policy_service_failed(),
            errors.POLICY_SERVICE_UNAVAILABLE,
            "Policy service unavailable: this call needs a policy decision and none could be had "
            "(the gateway fails closed)",
            backend=_BACKEND,
        ),
        _mapper(
            _mcp_metadata_is("status", "mcp_parse_error"),
            errors.PARSE_ERROR,
            "Parse error: the request body is not complete, valid JSON",
        ),
        _mapper(
            _mcp_metadata_is("status", "mcp_body_too_large"),
            errors.TOO_LARGE,
            f"Request too large: the body exceeds the gateway's limit of {limit} bytes",
        ),
        _mapper(
            _mcp_metadata_is("status", "mcp_duplicate_keys"),
            errors.DUPLICATE_KEYS,
            "Invalid Request: a JSON object in the body repeats a key",
        ),
        _mapper(
            _mcp_metadata_is("status", "mcp_not_jsonrpc"),
            errors.INVALID_REQUEST,
            "Invalid Request: %LOCAL_REPLY_BODY%; the gateway accepts one JSON-RPC 2.0 request "
            "per HTTP request (no batches)",
        ),
        _mapper(
            _mcp_metadata_is("status", "mcp_reject_no_mcp"),
            errors.NOT_MCP,
            "Invalid Request: only MCP traffic is allowed (POST with Content-Type: application/json and "
            "Accept: application/json, text/event-stream; GET with Accept: text/event-stream; "
            "DELETE with Mcp-Session-Id)",
        ),
        *_token_refusals(gateway),
        *_denials(gateway),
        _mapper(_status_is(404), errors.NO_BACKEND, "No MCP backend is served at path '%REQ(:path)%'"),
        _mapper(
            _status_is(413),
            errors.TOO_LARGE,
            f"Request too large: the body exceeds the gateway's limit of {limit} bytes",
        ),
        _mapper(
            _status_is(504), errors.BACKEND_TIMEOUT, f"Backend '{_BACKEND}' did not answer in time", backend=_BACKEND
        ),
        _mapper(
            _status_is(500, "GE"),
            errors.BACKEND_UNAVAILABLE,
            f"Backend '{_BACKEND}' is unavailable (%RESPONSE_CODE_DETAILS%)",
            keep_status=True,
            backend=_BACKEND,
        ),
        _mapper(
            _status_is(400, "GE"),
            errors.GATEWAY_ERROR,
            "Gateway error %RESPONSE_CODE%: %LOCAL_REPLY_BODY%",
            keep_status=True,
        ),
    ]
    return {"mappers": mappers}
