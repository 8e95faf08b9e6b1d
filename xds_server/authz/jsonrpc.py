"""JSON-RPC bodies as the policy service reads and writes them.

The policy service parses the raw request body itself (not Envoy's metadata)
so the request id keeps its exact JSON type: Envoy's metadata stores numbers
as doubles, which would turn id 7 into 7.0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from xds_server.core.errors import ErrorKind


@dataclass(frozen=True)
class ToolCall:
    request_id: Any
    tool: str
    arguments: dict[str, Any]


class NotAToolCall(ValueError):
    """The body is not one `tools/call` request the service can decide on."""


def parse_tool_call(body: str | bytes) -> ToolCall:
    """The id, tool name and arguments of a `tools/call` body; raises NotAToolCall.

    Envoy's MCP filter has already rejected anything that is not one JSON-RPC
    request, so this failing means a disagreement to refuse, not to guess at.
    """
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise NotAToolCall(f"body is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        raise NotAToolCall("not a tools/call request")
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        raise NotAToolCall("tools/call without params.name")
    arguments = params.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise NotAToolCall("params.arguments is not an object")
    return ToolCall(message.get("id"), params["name"], arguments)


def request_id_of(body: str | bytes) -> Any:
    """The request's id if the body is a JSON object with one, else None."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message.get("id") if isinstance(message, dict) else None


def error_body(request_id: Any, kind: ErrorKind, message: str, **data: Any) -> str:
    """A JSON-RPC error response, compact, with `data.reason` first."""
    error = {"code": kind.code, "message": message, "data": {"reason": kind.reason, **data}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":"))
