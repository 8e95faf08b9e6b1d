"""Building blocks of local-reply mappers: filters on the reply, and JSON-RPC error bodies.

`local_reply.py` assembles a gateway's mappers from these, and each protocol
translator uses them for the replies that are its own (its deframing
filter's refusals, what a known caller was refused). A JSON-RPC error body
echoes the request's id (`request_id`, an Envoy format string of the
protocol's metadata, so the id keeps its JSON type).
"""

from __future__ import annotations

import json
from typing import Any

from xds_server.core.errors import ErrorKind
from xds_server.core.wire import typed

__all__ = [
    "all_of",
    "cel_filter",
    "mapper",
    "metadata_filter",
    "metadata_is",
    "metadata_present",
    "route_is",
    "status_is",
]


def cel_filter(expression: str) -> dict[str, Any]:
    """An access-log filter evaluating a CEL expression (natively, in Envoy)."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": typed(
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter", {"expression": expression}
            ),
        }
    }


def status_is(code: int, op: str = "EQ") -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {"op": op, "value": {"default_value": code, "runtime_key": f"agentxds.local_reply.{code}"}}
        }
    }


def metadata_filter(namespace: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    """True when metadata `namespace:key` matches `value` (false when it is not set)."""
    return {
        "metadata_filter": {
            "matcher": {"filter": namespace, "path": [{"key": key}], "value": value},
            "match_if_key_not_found": False,
        }
    }


def metadata_is(namespace: str, key: str, *values: str) -> dict[str, Any]:
    """True when metadata `namespace:key` is one of `values` (false when it is not set)."""
    matchers = [{"string_match": {"exact": v}} for v in values]
    return metadata_filter(
        namespace, key, matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}
    )


def metadata_present(namespace: str, key: str) -> dict[str, Any]:
    """True when metadata `namespace:key` is set (to anything)."""
    return metadata_filter(namespace, key, {"present_match": True})


def route_is(name: str) -> str:
    """A CEL expression true on the Envoy route named `name`."""
    return f"xds.route_name == {json.dumps(name)}"


def all_of(*filters: dict[str, Any]) -> dict[str, Any]:
    """Every filter holds (nested and_filters flattened)."""
    flat = [f for x in filters for f in (x["and_filter"]["filters"] if "and_filter" in x else [x])]
    return flat[0] if len(flat) == 1 else {"and_filter": {"filters": flat}}


def mapper(
    when: dict[str, Any],
    kind: ErrorKind,
    message: str,
    request_id: str,
    *,
    keep_status: bool = False,
    **data: str,
) -> dict[str, Any]:
    """A mapper answering `kind` as a JSON-RPC error; `keep_status` leaves Envoy's HTTP status as it was."""
    out: dict[str, Any] = {"filter": when}
    if not keep_status:
        out["status_code"] = kind.http_status
    return out | {
        "body_format_override": {
            "content_type": "application/json",
            "json_format": {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": kind.code, "message": message, "data": {"reason": kind.reason, **data}},
            },
        },
    }
