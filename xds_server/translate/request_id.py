"""The request's JSON-RPC id, exactly, in every reply Envoy makes itself.

The protocol filter (MCP's) keeps the id only when the body is one valid
JSON-RPC request within its size limit, and as a double. So before it,
`envoy.filters.http.json_to_metadata` reads the body's top-level `id` into
`agentxds.jsonrpc` metadata: `id` with its JSON type (numbers as doubles)
and `id_text`, the digits of an integer id exactly (int64). It reads bodies
of any content type (a wrong Content-Type or Accept is refused at header time
by the protocol filter, yet the id is readable), with a byte order mark,
without `jsonrpc` or with a wrong one, and bodies over the protocol's limit
that fit the connection buffer (`ExtensionWithMatcher` skips it when
Content-Length says more: such a body would only be buffered to be
refused). It never refuses anything itself: a body it cannot read leaves no
metadata.

Every local-reply mapper whose body echoes the protocol's id
(`exact_ids`) then becomes three, tried in order:

1. the id is an integer beyond ±2^53 (a double loses digits there): the
   same body as a text template with the id's digits spliced in. A text template does not escape what it inserts, so request-derived
   values (tool names, paths, Envoy's details) are left out of this variant
   (`…`, or the `data` field dropped): only our own names stay;
2. `agentxds.jsonrpc` has an id: the same JSON body with that id;
3. otherwise the mapper as it was (the protocol filter's id, which it can
   read from a body that broke off, and over-long bodies it cut short).

What stays impossible in Envoy 1.40: integer ids beyond int64 and other
spellings of numbers (`1e3`, `2.50`) are normalised by every parser Envoy has
(a double or an int64 in metadata); a body larger than the connection buffer
without Content-Length is answered 413 before anything could read it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from xds_server.core.wire import JSONRPC_METADATA_NAMESPACE, typed
from xds_server.ir.types import GatewayIR
from xds_server.translate.cel import IDENTIFIED_AGENT
from xds_server.translate.filters import HttpFilter, Slot
from xds_server.translate.replies import all_of, metadata_filter

ID_FILTER = "agentxds.jsonrpc.id"
NAMESPACE = JSONRPC_METADATA_NAMESPACE
ID = f"%DYNAMIC_METADATA({NAMESPACE}:id)%"
ID_TEXT = f"%DYNAMIC_METADATA({NAMESPACE}:id_text)%"
_J2M = "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
#: Format commands whose value is ours (route names, the name of the agent Envoy recognised: names
#: are DNS labels, policy/base.py) or cannot hold a quote or backslash (a status code, an upstream's
#: ip:port). Nothing the request carries, however checked it may seem.
_SAFE_COMMANDS = frozenset({"%ROUTE_NAME%", "%RESPONSE_CODE%", "%UPSTREAM_HOST%", IDENTIFIED_AGENT})
_COMMAND = re.compile(r"%[A-Z_]+(?:\([^)]*\))?(?::[0-9]+)?%")
_LEFT_OUT = "…"


def _long_integer() -> str:
    """Integer ids a double cannot hold exactly: beyond ±2^53 (json_to_metadata writes no leading zeros)."""
    return f"-?{greater_than(2**53)}"


def greater_than(limit: int) -> str:
    """An RE2 pattern matching a decimal integer (leading zeros allowed) greater than `limit`."""
    digits = str(limit)
    longer = f"[1-9][0-9]{{{len(digits)},}}"
    alternatives = [longer]
    for i, d in enumerate(digits):
        if d == "9":
            continue
        higher = f"[{int(d) + 1}-9]" if int(d) < 8 else "9"
        rest = len(digits) - i - 1
        alternatives.append(digits[:i] + higher + (f"[0-9]{{{rest}}}" if rest else ""))
    return f"0*(?:{'|'.join(alternatives)})"


def id_filter(gateway: GatewayIR) -> HttpFilter:
    """json_to_metadata before the protocol filter, skipped for bodies over the connection buffer."""
    reader = typed(_J2M, {"request_rules": {
        "allow_content_types_regex": {"regex": ".*"},
        "allow_empty_content_type": True,
        "rules": [
            {"selectors": [{"key": "id"}],
             "on_present": {"metadata_namespace": NAMESPACE, "key": "id", "type": "PROTOBUF_VALUE"}},
            {"selectors": [{"key": "id"}],
             "on_present": {"metadata_namespace": NAMESPACE, "key": "id_text", "type": "STRING"}},
        ],
    }})  # fmt: skip
    too_long = {
        "predicate": {"single_predicate": {
            "input": {"name": "content-length", "typed_config": typed(
                "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", {"header_name": "content-length"})},
            "value_match": {"safe_regex": {"google_re2": {}, "regex": greater_than(
                gateway.listener.connection_buffer_bytes)}},
        }},
        "on_match": {"action": {"name": "skip", "typed_config": typed(
            "envoy.extensions.filters.common.matcher.action.v3.SkipFilter")}},
    }  # fmt: skip
    config = typed("envoy.extensions.common.matching.v3.ExtensionWithMatcher", {
        "extension_config": {"name": "envoy.filters.http.json_to_metadata", "typed_config": reader},
        "xds_matcher": {"matcher_list": {"matchers": [too_long]}},
    })  # fmt: skip
    return HttpFilter(ID_FILTER, Slot.REQUEST_ID, config)


# ---------------------------------------------------------------- replies


def _metadata(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return metadata_filter(NAMESPACE, key, value)


_HAS_ID = _metadata("id", {"present_match": True})
_LONG_INTEGER_ID = all_of(
    _metadata("id", {"double_match": {"range": {"start": -1.0e300, "end": 1.0e300}}}),
    _metadata("id_text", {"string_match": {"safe_regex": {"regex": _long_integer()}}}),
)


def _replace(value: Any, old: str, new: Any) -> Any:
    if value == old:
        return new
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    return value


def _mentions(value: Any, text: str) -> bool:
    return value == text or (isinstance(value, dict) and any(_mentions(v, text) for v in value.values()))


def _template_string(value: str) -> str:
    """`value` as the inside of a JSON string in a text template: literal parts escaped, our own
    format commands kept, request-derived ones left out."""
    out, last = [], 0
    for command in _COMMAND.finditer(value):
        out.append(json.dumps(value[last : command.start()])[1:-1])
        out.append(command.group() if command.group() in _SAFE_COMMANDS else _LEFT_OUT)
        last = command.end()
    out.append(json.dumps(value[last:])[1:-1])
    text = "".join(out)
    if "%" in _COMMAND.sub("", text).replace("%%", ""):  # %% is Envoy's escaped percent sign
        raise ValueError(f"a literal % in a reply cannot go into a text template: {value!r}")
    return text


def _unsafe_only(value: Any) -> bool:
    return isinstance(value, str) and bool(_COMMAND.fullmatch(value)) and value not in _SAFE_COMMANDS


def _template(value: Any, request_id: str) -> str:
    """A JSON value as a text-format template; `request_id` becomes the id's digits."""
    if value == request_id:
        return ID_TEXT
    if isinstance(value, dict):
        fields = [f"{json.dumps(k)}:{_template(v, request_id)}" for k, v in value.items()
                  if v == request_id or not _unsafe_only(v)]  # fmt: skip
        return "{" + ",".join(fields) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_template(v, request_id) for v in value) + "]"
    if isinstance(value, str):
        return f'"{_template_string(value)}"'
    return json.dumps(value)


def exact_ids(mappers: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    """Each mapper whose JSON body holds `request_id` (the protocol filter's id) as the three
    variants of the module docstring; the others unchanged."""
    out: list[dict[str, Any]] = []
    for m in mappers:
        body = m.get("body_format_override", {})
        if not _mentions(body.get("json_format"), request_id):
            out.append(m)
            continue
        text = {"content_type": body["content_type"],
                "text_format_source": {"inline_string": _template(body["json_format"], request_id)}}  # fmt: skip
        json_body = body | {"json_format": _replace(body["json_format"], request_id, ID)}
        out += [
            m | {"filter": all_of(m["filter"], _LONG_INTEGER_ID), "body_format_override": text},
            m | {"filter": all_of(m["filter"], _HAS_ID), "body_format_override": json_body},
            m,
        ]
    return out
