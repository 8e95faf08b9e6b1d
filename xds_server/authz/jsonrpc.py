"""JSON-RPC bodies as the policy service reads and writes them (every protocol here is JSON-RPC).

The policy service parses the raw request body itself (not Envoy's metadata)
so the request id keeps its exact JSON type: Envoy's metadata stores numbers
as doubles, which would turn id 7 into 7.0.
"""

from __future__ import annotations

import json
from typing import Any

from xds_server.core.errors import ErrorKind


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
