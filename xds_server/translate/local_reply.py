"""Envoy's own replies → JSON-RPC error objects (HCM `local_reply_config`).

Every reply Envoy generates itself (RBAC denial, MCP filter rejection, no
route, upstream failure) is rewritten into `{"jsonrpc": "2.0", "id": <the
request's id, with its type>, "error": {code, message, data}}`, so MCP clients
report the gateway's code and reason instead of a bare `RBAC: access denied`.

Mappers are tried in order and the first match wins, so the order below goes
from the most specific to the catch-all. The MCP filter labels each of its
rejections in metadata `envoy.filters.http.mcp: status`; RBAC's own metadata
is not visible here, so denials are told apart by what was requested.
"""

from __future__ import annotations

import re
from typing import Any

from xds_server import errors
from xds_server.errors import ErrorKind
from xds_server.ir.types import GatewayIR
from xds_server.translate.names import MCP_METADATA_NAMESPACE
from xds_server.translate.proto import typed

_REQUEST_ID = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:id)%"
_METHOD = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:method)%"
_TOOL = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:params:name)%"
_URI = f"%DYNAMIC_METADATA({MCP_METADATA_NAMESPACE}:params:uri)%"
_BACKEND = "%ROUTE_NAME%"


def _status_is(code: int, op: str = "EQ") -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": op, "value": {"default_value": code, "runtime_key": f"agentxds.local_reply.{code}"}}}}


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
    return filters[0] if len(filters) == 1 else {"and_filter": {"filters": list(filters)}}


def _mapper(when: dict[str, Any], kind: ErrorKind, message: str, *, keep_status: bool = False, **data: str) -> dict[str, Any]:
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


def unknown_identity_filter(gateway: GatewayIR) -> dict[str, Any] | None:
    """An access-log filter true when the request proves no known agent's identity.

    None when every request is unknown (the gateway trusts no identity source).
    """
    header = gateway.identity.trusted_header
    if header is None:
        return None
    values = sorted({p.value for a in gateway.agents for p in a.principals if p.header == header})
    if not values:
        return None
    regex = "^(" + "|".join(re.escape(v) for v in values) + ")$"
    return {
        "header_filter": {
            "header": {
                "name": header,
                "string_match": {"safe_regex": {"regex": regex}},
                "invert_match": True,
                "treat_missing_header_as_empty": True,
            }
        }
    }


def _caller(gateway: GatewayIR) -> str:
    header = gateway.identity.trusted_header
    return f"%REQ({header})%" if header else "-"


def local_reply_config(gateway: GatewayIR) -> dict[str, Any]:
    """The HCM `local_reply_config` for `gateway`."""
    caller = _caller(gateway)
    denied = _status_is(403)
    unknown = unknown_identity_filter(gateway)
    limit = gateway.max_request_body_bytes
    mappers = [
        # Replies that are JSON-RPC errors already keep their body: the MCP
        # filter's own (2026-07-28 header/body mismatch -32020, missing _meta
        # -32602) and the policy service's denials.
        {"filter": _reply_is_json()},
        _mapper(_policy_service_failed(), errors.POLICY_SERVICE_UNAVAILABLE,
                "Policy service unavailable: this call needs a policy decision and none could be had "
                "(the gateway fails closed)", backend=_BACKEND),
        _mapper(_mcp_metadata_is("status", "mcp_parse_error"), errors.PARSE_ERROR,
                "Parse error: the request body is not complete, valid JSON"),
        _mapper(_mcp_metadata_is("status", "mcp_body_too_large"), errors.TOO_LARGE,
                f"Request too large: the body exceeds the gateway's limit of {limit} bytes"),
        _mapper(_mcp_metadata_is("status", "mcp_duplicate_keys"), errors.DUPLICATE_KEYS,
                "Invalid Request: a JSON object in the body repeats a key"),
        _mapper(_mcp_metadata_is("status", "mcp_not_jsonrpc"), errors.INVALID_REQUEST,
                "Invalid Request: %LOCAL_REPLY_BODY%; the gateway accepts one JSON-RPC 2.0 request "
                "per HTTP request (no batches)"),
        _mapper(_mcp_metadata_is("status", "mcp_reject_no_mcp"), errors.NOT_MCP,
                "Invalid Request: only MCP traffic is allowed (POST with Content-Type: application/json and "
                "Accept: application/json, text/event-stream; GET with Accept: text/event-stream; "
                "DELETE with Mcp-Session-Id)"),
        _mapper(_all(denied, unknown) if unknown else denied, errors.UNKNOWN_AGENT,
                "Unknown agent: the request carries no identity of an agent known to this gateway"),
        _mapper(_all(denied, _mcp_metadata_is("method", "tools/call")), errors.TOOL_DENIED,
                f"Tool '{_TOOL}' is not allowed for agent '{caller}' on backend '{_BACKEND}'",
                tool=_TOOL, backend=_BACKEND),
        _mapper(_all(denied, _mcp_metadata_is("method", "resources/read", "resources/subscribe", "resources/unsubscribe")),
                errors.RESOURCE_DENIED,
                f"Resource '{_URI}' is not allowed for agent '{caller}' on backend '{_BACKEND}'",
                resource=_URI, backend=_BACKEND),
        _mapper(_all(denied, _mcp_metadata_is("method", "prompts/get")), errors.PROMPT_DENIED,
                f"Prompt '{_TOOL}' is not allowed for agent '{caller}' on backend '{_BACKEND}'",
                prompt=_TOOL, backend=_BACKEND),
        _mapper(denied, errors.METHOD_DENIED,
                f"Method '{_METHOD}' (HTTP %REQ(:method)%) is not allowed for agent '{caller}' on backend "
                f"'{_BACKEND}': the agent has no grant there, or the method is not allowed through the gateway",
                method=_METHOD, backend=_BACKEND),
        _mapper(_status_is(404), errors.NO_BACKEND, "No MCP backend is served at path '%REQ(:path)%'"),
        _mapper(_status_is(413), errors.TOO_LARGE,
                f"Request too large: the body exceeds the gateway's limit of {limit} bytes"),
        _mapper(_status_is(504), errors.BACKEND_TIMEOUT, f"Backend '{_BACKEND}' did not answer in time",
                backend=_BACKEND),
        _mapper(_status_is(500, "GE"), errors.BACKEND_UNAVAILABLE,
                f"Backend '{_BACKEND}' is unavailable (%RESPONSE_CODE_DETAILS%)", keep_status=True,
                backend=_BACKEND),
        _mapper(_status_is(400, "GE"), errors.GATEWAY_ERROR, "Gateway error %RESPONSE_CODE%: %LOCAL_REPLY_BODY%",
                keep_status=True),
    ]
    return {"mappers": mappers}
