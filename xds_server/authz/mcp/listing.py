"""Rewrite MCP list responses (`tools/list`, `prompts/list`, `resources/list`,
`resources/templates/list`) item by item: the policy service's ext_proc calls
this on the buffered response body to hide what a caller may not see.

Pure functions. The JSON-RPC method is not known from a response, so the kind
of list comes from the keys of the response's `result`: `tools`, `prompts`,
`resources` or `resourceTemplates` holding a list (a result with several such
keys has each of them filtered). Every other field of the result (`nextCursor`,
`_meta`, `ttlMs`, ...) and of the message is kept as it was.

The body (JSON or SSE events) is walked by authz/messages.py: only the events
whose list lost items are re-emitted.

Nothing here raises on a malformed body: the result says `parse_failed` so the
caller can log it and decide (the policy service refuses such a list when a
guard is on, rather than pass unfiltered items). `keep` itself must not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from xds_server.authz.messages import rewrite_body

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
    removed: list[str] = []
    malformed: list[str] = []

    def rewrite(message: Any) -> bool:
        return _rewrite_message(message, keep, removed, malformed)

    outcome = rewrite_body(body, content_type, rewrite)
    return ListRewrite(outcome.body if removed else None, tuple(removed), outcome.failed or bool(malformed))


def _rewrite_message(message: Any, keep: Keep, removed: list[str], malformed: list[str]) -> bool:
    """Filter the list(s) of one JSON-RPC response (or of each in a batch) in place; True if any item went."""
    if isinstance(message, list):
        changed = False
        for element in message:
            changed = _rewrite_message(element, keep, removed, malformed) or changed
        return changed
    if not isinstance(message, dict):
        return False
    if "method" in message:
        if "result" in message or "error" in message:
            # Both a request and a response: a client may read it as the response (the MCP SDK does), so
            # it is not passed on as a request would be.
            malformed.append("method")
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
            malformed.append(kind)
            continue
        kept = []
        for item in items:
            if isinstance(item, dict) and keep(kind, item):
                kept.append(item)
            else:
                removed.append(item_name(kind, item))
        if len(kept) != len(items):
            result[kind] = kept
            changed = True
    return changed
