"""Rewrite MCP list responses (`tools/list`, `prompts/list`, `resources/list`,
`resources/templates/list`) item by item: the policy service's ext_proc calls
this on the buffered response body to hide what a caller may not see.

Pure functions. The JSON-RPC method is not known from a response, so the kind
of list comes from the keys of the response's `result`: `tools`, `prompts`,
`resources` or `resourceTemplates` holding a list (a result with several such
keys has each of them filtered). Every other field of the result (`nextCursor`,
`_meta`, `ttlMs`, ...) and of the message is kept as it was.

Two body formats, as a streamable-HTTP MCP server answers a POST:

- `application/json`: one JSON-RPC message (or a batch array of them).
- `text/event-stream`: SSE events. Each event's `data:` lines are joined with
  "\\n" as the SSE spec says; an event whose data is a JSON-RPC response with a
  list result and loses items is re-emitted with a single `data:` line in the
  place of the first one, every other line (`event:`, `id:`, `retry:`,
  comments) and the line terminators (CRLF, LF or CR, as received) unchanged.
  All other events, pings and comments are kept byte for byte.

Nothing here raises on a malformed body: the result says `parse_failed` so the
caller can log it and decide (the policy service refuses such a list when a
guard is on, rather than pass unfiltered items). `keep` itself must not raise.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LIST_KINDS = ("tools", "prompts", "resources", "resourceTemplates")
"""The result keys that make a response a list response, in the order they are processed."""

_NAME_KEYS = {"tools": "name", "prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}

Keep = Callable[[str, Mapping[str, Any]], bool]


@dataclass(frozen=True)
class ListRewrite:
    """The outcome of `rewrite_list_response`.

    `body` is the new body, or None when nothing was removed (leave the body
    alone: no copy, no content-length change). `removed` names each removed
    item (`item_name`; "" for an item without a usable name), in body order.
    `parse_failed` says some part of the body that should be JSON-RPC could not
    be read (bad UTF-8 or JSON, a list key not holding a list, an unknown
    content type); other parts may still have been rewritten.
    """

    body: bytes | None
    removed: tuple[str, ...] = ()
    parse_failed: bool = False


def item_name(kind: str, item: Any) -> str:
    """What identifies an item of a list: `name` (tools, prompts), `uri` (resources),
    `uriTemplate` (resourceTemplates); "" when it is missing or not a string."""
    if not isinstance(item, Mapping):
        return ""
    value = item.get(_NAME_KEYS.get(kind, "name"))
    return value if isinstance(value, str) else ""


def rewrite_list_response(body: bytes, content_type: str, keep: Keep) -> ListRewrite:
    """Drop the list items for which `keep(kind, item)` is false.

    `content_type` is the response's header value (parameters such as
    `charset` are ignored). Items that are not JSON objects are removed without
    asking `keep` (no client could use them, and nothing can be judged about
    them). Other responses (results of other methods, errors, notifications)
    pass unchanged.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    state = _State(keep)
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        new = _rewrite_json_body(body, state)
    elif media == "text/event-stream":
        new = _rewrite_sse_body(body, state)
    else:
        new, state.failed = None, True
    if not state.removed:
        new = None
    return ListRewrite(new, tuple(state.removed), state.failed)


class _State:
    """What one rewrite accumulates while walking a body."""

    def __init__(self, keep: Keep) -> None:
        self.keep = keep
        self.removed: list[str] = []
        self.failed = False


def _rewrite_json_body(body: bytes, state: _State) -> bytes | None:
    message = _parse(body, state)
    if message is _UNPARSED or not _rewrite_message(message, state):
        return None
    return _dump(message).encode("utf-8")


def _rewrite_message(message: Any, state: _State) -> bool:
    """Filter the list(s) of one JSON-RPC response (or of each in a batch) in place; True if any item went."""
    if isinstance(message, list):
        changed = False
        for element in message:
            changed = _rewrite_message(element, state) or changed
        return changed
    if not isinstance(message, dict) or "method" in message:
        return False  # requests and notifications have no result to filter
    result = message.get("result")
    if not isinstance(result, dict):
        return False
    changed = False
    for kind in LIST_KINDS:
        if kind not in result:
            continue
        items = result[kind]
        if not isinstance(items, list):
            state.failed = True
            continue
        kept = []
        for item in items:
            if isinstance(item, dict) and state.keep(kind, item):
                kept.append(item)
            else:
                state.removed.append(item_name(kind, item))
        if len(kept) != len(items):
            result[kind] = kept
            changed = True
    return changed


_UNPARSED: Any = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would come back out as `Infinity`, which is not JSON
        raise ValueError(f"{text} does not fit a double")
    return value


def _parse(data: bytes | str, state: _State) -> Any:
    """JSON text → Python value, or `_UNPARSED` (and `state.failed`) for anything that is not JSON."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        state.failed = True
        return _UNPARSED


def _dump(message: Any) -> str:
    # Compact and single-line (an SSE data line cannot hold a raw newline; json escapes them in strings).
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


# --- text/event-stream -------------------------------------------------------------

_LINE_RE = re.compile(r"([^\r\n]*)(\r\n|\r|\n|\Z)")


def _split_lines(text: str) -> list[tuple[str, str]]:
    """(line, terminator) pairs covering `text` exactly; the last terminator may be ""."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _LINE_RE.match(text, pos)
        assert m is not None  # the pattern matches at any position
        pairs.append((m.group(1), m.group(2)))
        pos = m.end()
    return pairs


def _field(line: str) -> tuple[str, str]:
    """SSE field name and value (one leading space after the colon is not part of the value)."""
    name, colon, value = line.partition(":")
    if colon and value.startswith(" "):
        value = value[1:]
    return name, value


def _rewrite_sse_body(body: bytes, state: _State) -> bytes | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        state.failed = True
        return None
    bom = "\ufeff" if text.startswith("\ufeff") else ""  # the client strips one; keep it in place
    out: list[str] = [bom]
    event: list[tuple[str, str]] = []
    changed = False
    for line, term in _split_lines(text[len(bom) :]):
        event.append((line, term))
        if line == "":  # a blank line ends (dispatches) the event
            changed = _emit_event(event, out, state) or changed
            event = []
    if event:  # unterminated last event: a client drops it, but filter it anyway
        changed = _emit_event(event, out, state) or changed
    return "".join(out).encode("utf-8") if changed else None


def _emit_event(lines: list[tuple[str, str]], out: list[str], state: _State) -> bool:
    """Append one event to `out`, rewritten when its data is a list response that lost items."""
    data_at = [i for i, (line, _) in enumerate(lines) if not line.startswith(":") and _field(line)[0] == "data"]
    data = "\n".join(_field(lines[i][0])[1] for i in data_at)
    message = _parse(data, state) if data.strip() else _UNPARSED  # empty data: a priming/keepalive event
    if message is _UNPARSED or not _rewrite_message(message, state):
        out.extend(line + term for line, term in lines)
        return False
    first, drop = data_at[0], set(data_at[1:])
    for i, (line, term) in enumerate(lines):
        if i == first:
            out.append("data: " + _dump(message) + term)
        elif i not in drop:
            out.append(line + term)
    return True
