"""Where MCP messages carry task ids, for sealing them per owner (authz/sealed_ids.py).

Both revisions the gateway serves:

- 2025-11-25: a `tools/call` with `params.task` is answered with
  `{"task": {"taskId", ...}}`; `tasks/get` and `tasks/cancel` answer a Task
  (`result.taskId`); `tasks/result` answers the call's own result with
  `_meta["io.modelcontextprotocol/related-task"].taskId`; notifications
  (`notifications/tasks/status`: `params.taskId`) and messages about a task
  (`params._meta[related-task].taskId`) may come on the same stream.
- 2026-07-28 (the tasks extension): any `tools/call` of a client declaring
  the extension may be answered with a task handle, `result.resultType ==
  "task"` and `result.taskId`; `tasks/get` answers `result.taskId`;
  `tasks/update` and `tasks/cancel` answer an empty result.

A request naming a task (`tasks/get`, `tasks/result`, `tasks/cancel`,
`tasks/update`) carries it in `params.taskId`, and a 2026-07-28 one also in
the `Mcp-Name` header. Pure functions; nothing here raises on odd messages.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from typing import Any

from xds_server.authz.mcp import access
from xds_server.authz.protocols import IdSealing
from xds_server.authz.state import RouteView
from xds_server.core import errors
from xds_server.core.wire import MCP_METADATA_NAMESPACE
from xds_server.ir.principals import JwtPayloads

RELATED_TASK = "io.modelcontextprotocol/related-task"
#: The request methods that name a task in params.taskId.
TASK_REQUEST_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/cancel", "tasks/update"})
#: What a refusal of a task that is not the caller's says: the receiver's own words for an unknown
#: task (the MCP specification's -32602), so another caller's task looks like no task at all.
NOT_FOUND_CODE = errors.TASK_NOT_FOUND.code
NOT_FOUND_MESSAGE = "Failed to retrieve task: Task not found"


def created_task_ids(message: Any) -> list[str]:
    """The ids of the tasks a response creates: a legacy `result.task.taskId`, or a 2026-07-28
    task handle's `result.taskId` (resultType "task")."""
    found: list[str] = []
    for m in _each(message):
        result = m.get("result")  # even beside a "method": a client may read it as a response
        if not isinstance(result, dict):
            continue
        task = result.get("task")
        if isinstance(task, dict) and isinstance(task.get("taskId"), str):
            found.append(task["taskId"])
        if result.get("resultType") == "task" and isinstance(result.get("taskId"), str):
            found.append(result["taskId"])
    return found


def replace_task_ids(message: Any, mapping: Mapping[str, str]) -> bool:
    """Replace, in place, every task id in `mapping` wherever a message carries one; True if any was."""
    changed = False
    for holder in _holders(message):
        value = holder.get("taskId")
        if isinstance(value, str) and value in mapping:
            holder["taskId"] = mapping[value]
            changed = True
    return changed


def _each(message: Any) -> Iterator[dict[str, Any]]:
    for m in message if isinstance(message, list) else [message]:
        if isinstance(m, dict):
            yield m


def _holders(message: Any) -> Iterator[dict[str, Any]]:
    """The objects whose `taskId` names a task: results, tasks, params and related-task metadata."""
    for m in _each(message):
        for part in (m.get("result"), m.get("params")):
            if not isinstance(part, dict):
                continue
            yield part
            if isinstance(part.get("task"), dict):
                yield part["task"]
            meta = part.get("_meta")
            if isinstance(meta, dict) and isinstance(meta.get(RELATED_TASK), dict):
                yield meta[RELATED_TASK]


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        # Parsers disagree on which of two taskIds counts: never pick one (Envoy refuses these too).
        raise ValueError(f"repeated keys: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    return dict(pairs)


def task_request(body: bytes) -> tuple[Any, Any] | None:
    """(id, params.taskId) of a request naming a task; None when the body is not one (including a
    body whose objects repeat a key)."""
    try:
        message = json.loads(body, object_pairs_hook=_no_repeated_keys)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") not in TASK_REQUEST_METHODS:
        return None
    params = message.get("params")
    return message.get("id"), params.get("taskId") if isinstance(params, dict) else None


def restore_task_id(body: bytes, sealed: str, raw: str) -> bytes | None:
    """`body` with the sealed id replaced by the backend's, everything else byte for byte; None when
    params.taskId is not then the backend's id (the sealed id was not written plainly: the caller
    refuses, so nothing unchecked gets through)."""
    quoted = json.dumps(sealed).encode()
    restored = body.replace(quoted, json.dumps(raw, ensure_ascii=False).encode("utf-8"))
    check = task_request(restored)
    return restored if check is not None and check[1] == raw else None


def header_value(raw: str) -> str:
    """`raw` as an Mcp-Name header value: as it is when it is plain printable ASCII, else in the MCP
    transport's `=?base64?...?=` form."""
    if raw.isascii() and raw.isprintable() and raw == raw.strip() and not raw.startswith("=?"):
        return raw
    return f"=?base64?{base64.b64encode(raw.encode('utf-8')).decode('ascii')}?="


class McpTaskSealing(IdSealing):
    """Task ids, sealed per owner with the tool that created them."""

    def origin(self, metadata: Mapping[str, Mapping[str, Any]]) -> str | None:
        params = metadata.get(MCP_METADATA_NAMESPACE, {}).get("params")
        name = params.get("name") if isinstance(params, Mapping) else None
        return name if isinstance(name, str) else None

    def created_ids(self, message: Any) -> list[str]:
        return created_task_ids(message)

    def replace_ids(self, message: Any, mapping: Mapping[str, str]) -> bool:
        return replace_task_ids(message, mapping)

    def named_id(self, body: bytes) -> tuple[Any, Any] | None:
        return task_request(body)

    def restore(self, body: bytes, sealed: str, raw: str) -> bytes | None:
        return restore_task_id(body, sealed, raw)

    def restored_headers(self, headers: Mapping[str, str], raw: str) -> dict[str, str]:
        # A 2026-07-28 request repeats the task id in Mcp-Name (Envoy checked it matched the body).
        return {"mcp-name": header_value(raw)} if "mcp-name" in headers else {}

    def not_found(self, request_id: Any) -> str:
        error = {"code": NOT_FOUND_CODE, "message": NOT_FOUND_MESSAGE}
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":"))

    def may_use(self, view: RouteView, agent: str, origin: str, jwt: JwtPayloads) -> bool:
        return access.may_use(view, agent, "tools", origin, jwt)
