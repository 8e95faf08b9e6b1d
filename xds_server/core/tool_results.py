"""A refused MCP `tools/call` answered as a tool result (`CallToolResult` with `isError: true`).

Backends with `deniedToolCalls: toolResult` answer policy refusals of a tool
call this way, so the model reads why in the result's text and can choose
another tool, where a JSON-RPC error would end the call in the client. One
shape for both places that refuse: Envoy's local replies (where `request_id`
and the message hold Envoy format strings) and the policy service.

The refusal stays machine-readable in the result's `_meta` under
`REFUSAL_META_KEY`: the error code and `data` (with `reason`) that the
JSON-RPC error would have carried. `resultType: "complete"` is required by
2026-07-28 clients (the SDK refuses a result without it) and ignored by
2025-11-25 ones.
"""

from __future__ import annotations

from typing import Any

from xds_server.core.errors import ErrorKind

REFUSAL_META_KEY = "dev.agentxds/refusal"


def refused_call_result(request_id: Any, kind: ErrorKind, message: str, **data: Any) -> dict[str, Any]:
    """The JSON-RPC response carrying the refusal as a tool result."""
    text = f"The gateway refused this call ({kind.reason}): {message}"
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {
            "content": [{"type": "text", "text": text}],
            "isError": True,
            "resultType": "complete",
            "_meta": {REFUSAL_META_KEY: {"code": kind.code, "reason": kind.reason, **data}},
        },
    }
