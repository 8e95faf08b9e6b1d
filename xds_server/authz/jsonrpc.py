"""JSON-RPC bodies as the policy service reads and writes them (every protocol here is JSON-RPC).

The policy service parses the raw request body itself (not Envoy's metadata)
so the request id keeps its exact JSON type: Envoy's metadata stores numbers
as doubles, which would turn id 7 into 7.0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from xds_server.core.errors import ErrorKind


def request_id_of(body: str | bytes) -> Any:
    """The request's id if the body is a JSON object with one, else None (never raises: refusals use it)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter recurses
        return None
    return message.get("id") if isinstance(message, dict) else None


_INTEGER = re.compile(r"-?[0-9]+")


def id_from_metadata(found: Any) -> Any:
    """The request's id as Envoy's json_to_metadata read it (core/wire.py JSONRPC_METADATA_NAMESPACE):
    a string, or an integer from its exact digits; None for anything else (a non-integer number
    would come back altered, and a guess is not the request's id)."""
    if not isinstance(found, Mapping):
        return None
    value, text = found.get("id"), found.get("id_text")
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(text, str):
        return int(text) if _INTEGER.fullmatch(text) else None
    return None


def error_body(request_id: Any, kind: ErrorKind, message: str, **data: Any) -> str:
    """A JSON-RPC error response, compact, with `data.reason` first."""
    error = {"code": kind.code, "message": message, "data": {"reason": kind.reason, **data}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":"))


class RepeatedKey(ValueError):
    """A JSON object in the body repeats a key: parsers disagree on which value counts, so it is refused."""


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise RepeatedKey(sorted({k for k in keys if keys.count(k) > 1}))
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is beyond what a double holds")
    return value


def strict_loads(body: str | bytes) -> Any:
    """The body as JSON, refusing repeated keys anywhere (`RepeatedKey`), NaN/Infinity and numbers beyond
    a double (ValueError): what the policy service reads is what Envoy read, or nothing."""
    return json.loads(body, object_pairs_hook=_no_repeated_keys, parse_constant=_no_constant, parse_float=_finite)
