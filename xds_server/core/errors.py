"""The JSON-RPC error codes the gateway answers with: a stable, documented contract.

Codes -32700 and -32600 are JSON-RPC's own. The gateway's codes live in the
implementation-defined range and follow the HTTP status they stand for:
-320XX for 4XX (401 → -32001, 403 → -32003, ...) and -3205X for 5XX.
`data.reason` carries a stable machine-readable reason next to the message.
The README's error table is generated from `CATALOGUE` (tests keep it current).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    code: int
    reason: str  # stable, snake_case; goes in error.data.reason
    http_status: int  # status of the HTTP response carrying the error
    when: str  # one line for the README


PARSE_ERROR = ErrorKind(-32700, "parse_error", 400, "the body is not complete, valid JSON")
INVALID_REQUEST = ErrorKind(
    -32600,
    "invalid_request",
    400,
    "not one JSON-RPC 2.0 request: not JSON-RPC, a batch (array), or bytes that are not JSON at all",
)
HEADER_MISMATCH = ErrorKind(
    -32020,
    "(Envoy's own error)",
    400,
    "a 2026-07-28 request whose Mcp-Method, Mcp-Name or MCP-Protocol-Version header is missing or "
    "disagrees with the body (Envoy's MCP filter answers it; passed through unchanged)",
)
MISSING_META = ErrorKind(
    -32602,
    "(Envoy's own error)",
    400,
    "a 2026-07-28 request without the required params._meta fields (Envoy's own error, passed through)",
)
TASK_NOT_FOUND = ErrorKind(
    -32602,
    "(none: as an MCP server answers an unknown task)",
    200,
    "a task request (on a backend with tasks) names a task that is not the caller's, was altered, was handed out "
    "by another backend, or whose tool the caller may no longer call: `Failed to retrieve task: Task not found`, "
    "exactly as for a task that does not exist",
)
A2A_TASK_NOT_FOUND = ErrorKind(
    -32001,
    "(none: as an A2A agent answers an unknown task)",
    200,
    "an A2A request names a task or context that is not the caller's, was altered, or was handed out by another "
    "agent: A2A's TaskNotFound (`Task not found`), exactly as for a task that does not exist",
)
MALFORMED_HTTP = ErrorKind(
    -32600,
    "malformed_http",
    400,
    "Envoy could not parse the HTTP request (both Content-Length and Transfer-Encoding, a space before a "
    "header's colon, ...; `data.detail` has Envoy's words); HTTP/1.0 gets HTTP 426 with this reason",
)
DUPLICATE_KEYS = ErrorKind(-32600, "duplicate_keys", 400, "a JSON object in the body repeats a key")
NOT_A2A = ErrorKind(
    -32600,
    "not_a2a",
    400,
    "not an A2A request: not a POST of one JSON-RPC 2.0 request object with a JSON Content-Type (A2A routes)",
)
NOT_MCP = ErrorKind(
    -32600,
    "not_mcp",
    400,
    "not an MCP request: wrong HTTP method or Content-Type, or an Accept header that is missing or lacks "
    "what MCP needs (POST: application/json and text/event-stream; GET: text/event-stream; */* covers both)",
)
INVALID_CREDENTIALS = ErrorKind(
    -32001,
    "invalid_credentials",
    401,
    "a token was sent but is not valid (expired, bad signature, wrong issuer or audience; `data.detail` says "
    "which); on a backend with `auth` the reply also carries `WWW-Authenticate`",
)
MISSING_CREDENTIALS = ErrorKind(
    -32001,
    "missing_credentials",
    401,
    "the backend requires a user token (`auth`) and none was sent; `WWW-Authenticate` names its "
    "protected-resource metadata",
)
AMBIGUOUS_IDENTITY = ErrorKind(
    -32001,
    "ambiguous_identity",
    400,
    "a credential header (the trusted header, the API-key header, a JWT provider's token header) was sent more "
    "than once or holds a comma; `data.headers` lists them (refused before any identity is read)",
)
UNKNOWN_AGENT = ErrorKind(-32001, "unknown_agent", 403, "the request carries no identity of a known agent")
TOOL_DENIED = ErrorKind(-32003, "tool_not_allowed", 403, "the agent may not call this tool on this backend")
RESOURCE_DENIED = ErrorKind(-32003, "resource_not_allowed", 403, "the agent may not read this resource")
PROMPT_DENIED = ErrorKind(-32003, "prompt_not_allowed", 403, "the agent may not get this prompt")
SKILL_DENIED = ErrorKind(
    -32003,
    "skill_not_allowed",
    403,
    "an A2A message names (metadata.skillId) a skill of the agent the caller was not granted",
)
METHOD_DENIED = ErrorKind(
    -32003,
    "method_not_allowed",
    403,
    "the agent has no grant on this backend, or the method is not one the gateway allows",
)
CONDITION_NOT_MET = ErrorKind(
    -32003, "condition_not_met", 403, "the rule that grants the tool has a `when` condition this call does not meet"
)
TOOL_DRIFTED = ErrorKind(
    -32003,
    "tool_changed",
    403,
    "the backend changed a pinned tool (or offers one not pinned, or one that failed screening) since `agentxds pin`",
)
APPROVAL_REQUIRED = ErrorKind(
    -32006,
    "approval_required",
    403,
    "the rule needs an operator's approval: `data.approvalId` names it; retry the same call once approved",
)
APPROVAL_DENIED = ErrorKind(-32006, "approval_denied", 403, "an operator denied this call")
QUOTA_EXCEEDED = ErrorKind(
    -32029, "quota_exceeded", 429, "the rule's call quota is used up; `data.retryAfterSeconds` says when to retry"
)
USER_TOKEN_REQUIRED = ErrorKind(
    -32001,
    "user_token_required",
    401,
    "the backend acts for a user: the request carries no verified user token of the backend's provider",
)
NO_USER_CREDENTIAL = ErrorKind(
    -32003, "no_user_credential", 403, "the backend needs a credential the user does not have (perUserSecrets)"
)
CREDENTIAL_UNAVAILABLE = ErrorKind(
    -32052,
    "credential_unavailable",
    502,
    "the gateway could not obtain the backend's credential for the user (token exchange failed, secrets unreadable)",
)
REQUEST_TIMEOUT = ErrorKind(
    -32008,
    "request_timeout",
    408,
    "the request's headers did not arrive within the Gateway's `limits.requestHeadersTimeout`, or the whole "
    "request within `limits.requestReceiveTimeout` (slowloris, trickled bodies); the connection is closed",
)
HEADERS_TOO_LARGE = ErrorKind(
    -32031,
    "request_headers_too_large",
    431,
    "the request's headers exceed the Gateway's `limits.maxRequestHeadersKib` or `limits.maxHeaders` (HTTP/1; "
    "over HTTP/2 Envoy's codec resets the stream instead)",
)
NO_BACKEND = ErrorKind(-32004, "no_backend", 404, "no MCP backend is served at this path")
TOO_LARGE = ErrorKind(-32013, "request_too_large", 413, "the body is larger than the gateway's maxRequestBodyBytes")
POLICY_SERVICE_UNAVAILABLE = ErrorKind(
    -32050,
    "policy_service_unavailable",
    503,
    "the call needs the policy service, which did not answer (fail closed; see policyService.failOpen), or "
    "refused Envoy's check for want of the gateway's `policyService.secret` (failOpen does not apply to that)",
)
OVERLOADED = ErrorKind(
    -32051,
    "overloaded",
    503,
    "Envoy is close to its heap limit (`--max-heap` of `agentxds up` and `agentxds bootstrap`) and sheds new requests until memory is freed; "
    "retry later",
)
STATE_UNAVAILABLE = ErrorKind(
    -32055,
    "state_unavailable",
    503,
    "the call is under a quota or an approval kept in the shared decision state (`agentxds serve --state-store`: "
    "Valkey or Redis), which cannot be reached (fail closed); other calls are not affected",
)
SESSION_GONE = ErrorKind(
    -32600,
    "session_gone",
    404,
    "a legacy session's server is gone (stopped, removed or unhealthy): the client must initialize a new session "
    "(HTTP 404, as the MCP spec says for a session that ended)",
)
SESSION_UNKNOWN = ErrorKind(
    -32600,
    "session_unknown",
    404,
    "a virtual server's session id it did not issue (altered, made up, or another server's): initialize a new session",
)
UNKNOWN_NAME = ErrorKind(
    -32602, "unknown_name", 200, "a virtual server has no tool, prompt or resource of that name (or it is curated out)"
)
METHOD_NOT_FOUND = ErrorKind(-32601, "method_not_found", 200, "a virtual server does not serve that method")
BACKEND_UNAVAILABLE = ErrorKind(-32053, "backend_unavailable", 503, "the backend cannot be reached")
BACKEND_TIMEOUT = ErrorKind(-32054, "backend_timeout", 504, "the backend did not answer in time")
GATEWAY_ERROR = ErrorKind(-32603, "gateway_error", 500, "any other error raised by the gateway itself")

CATALOGUE: tuple[ErrorKind, ...] = (
    PARSE_ERROR,
    INVALID_REQUEST,
    MALFORMED_HTTP,
    DUPLICATE_KEYS,
    NOT_MCP,
    NOT_A2A,
    HEADER_MISMATCH,
    MISSING_META,
    TASK_NOT_FOUND,
    A2A_TASK_NOT_FOUND,
    AMBIGUOUS_IDENTITY,
    MISSING_CREDENTIALS,
    INVALID_CREDENTIALS,
    USER_TOKEN_REQUIRED,
    UNKNOWN_AGENT,
    TOOL_DENIED,
    RESOURCE_DENIED,
    PROMPT_DENIED,
    SKILL_DENIED,
    METHOD_DENIED,
    CONDITION_NOT_MET,
    TOOL_DRIFTED,
    NO_USER_CREDENTIAL,
    APPROVAL_REQUIRED,
    APPROVAL_DENIED,
    QUOTA_EXCEEDED,
    REQUEST_TIMEOUT,
    HEADERS_TOO_LARGE,
    NO_BACKEND,
    TOO_LARGE,
    POLICY_SERVICE_UNAVAILABLE,
    OVERLOADED,
    CREDENTIAL_UNAVAILABLE,
    SESSION_GONE,
    SESSION_UNKNOWN,
    UNKNOWN_NAME,
    METHOD_NOT_FOUND,
    BACKEND_UNAVAILABLE,
    BACKEND_TIMEOUT,
    STATE_UNAVAILABLE,
    GATEWAY_ERROR,
)


def is_policy_refusal(kind: ErrorKind) -> bool:
    """A refusal by the policies (not of the credentials, limits or failures): it goes out with the
    Gateway's `denials.httpStatus` (200 by default) instead of its own 403."""
    return kind.http_status == 403


def markdown_table() -> str:
    """The README's table of error codes."""
    rows = ["| code | data.reason | HTTP | when |", "|---|---|---|---|"]
    rows += [
        f"| {k.code} | `{k.reason}` | {'200 or 403 ¹' if is_policy_refusal(k) else k.http_status} | {k.when} |"
        for k in CATALOGUE
    ]
    note = ("\n¹ A policy refusal: HTTP 200 by default, 403 with the Gateway's `denials: {httpStatus: 403}`. "
            "On a backend with `deniedToolCalls: toolResult` a refused `tools/call` is a tool result instead.\n")  # fmt: skip
    return "\n".join(rows) + "\n" + note
