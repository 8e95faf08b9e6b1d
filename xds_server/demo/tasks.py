"""MCP tasks for the demo server, in both revisions, on the official SDK (which has no task support).

- 2025-11-25 (experimental tasks in the core spec): a `tools/call` of a task
  tool with `params.task` is answered at once with `{"task": {...}}`;
  `tasks/get`, `tasks/result` (waits for the end), `tasks/list` and
  `tasks/cancel` follow the task. `initialize` advertises `capabilities.tasks`
  and `tools/list` the tool's `execution.taskSupport`. The SDK would check a
  handler's result against `CallToolResult`, so a server middleware answers
  the task-augmented call and adds the advertisements.
- 2026-07-28 (the `io.modelcontextprotocol/tasks` extension, SEP-2663): a
  call of a task tool from a client declaring the extension is answered with
  a task handle (`resultType: "task"`); `tasks/get` (the result inlined once
  complete), `tasks/update` and `tasks/cancel` follow it.

Task ids are random; a task completes `delay` seconds after it was created.
Like every MCP server, this one hands any caller any task it names: keeping
callers apart is the gateway's job (sealed task ids).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams, RequestParams
from pydantic import ConfigDict

EXTENSION = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"
LEGACY = frozenset({"2025-11-25"})
NOT_FOUND = "Failed to retrieve task: Task not found"


class TaskIdParams(RequestParams):
    model_config = ConfigDict(extra="allow")
    task_id: str


class ListParams(RequestParams):
    model_config = ConfigDict(extra="allow")
    cursor: str | None = None


@dataclass
class _Task:
    tool: str
    arguments: dict[str, Any]
    created: float
    ttl_ms: int
    cancelled: bool = False


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class TaskStore:
    """The demo's tasks: `run(tool, arguments)` gives a task tool's result text."""

    tools: dict[str, Callable[[dict[str, Any]], str]]
    delay: float = 0.3
    tasks: dict[str, _Task] = field(default_factory=dict)

    def create(self, tool: str, arguments: dict[str, Any], ttl_ms: int | None) -> str:
        task_id = secrets.token_hex(12)
        self.tasks[task_id] = _Task(tool, dict(arguments), time.time(), ttl_ms or 60_000)
        return task_id

    def find(self, task_id: Any) -> _Task:
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise MCPError(code=-32602, message=NOT_FOUND)
        return task

    def status(self, task: _Task) -> str:
        if task.cancelled:
            return "cancelled"
        return "completed" if time.time() >= task.created + self.delay else "working"

    def result(self, task: _Task) -> dict[str, Any]:
        text = self.tools[task.tool](task.arguments)
        return {"content": [{"type": "text", "text": text}], "isError": False}

    def view(self, task_id: str, modern: bool) -> dict[str, Any]:
        task = self.tasks[task_id]
        status = self.status(task)
        shown: dict[str, Any] = {"taskId": task_id, "status": status, "createdAt": _iso(task.created),
                                 "lastUpdatedAt": _iso(task.created + (self.delay if status == "completed" else 0))}  # fmt: skip
        if modern:
            shown |= {"ttlMs": task.ttl_ms, "pollIntervalMs": 100}
        else:
            shown |= {"ttl": task.ttl_ms, "pollInterval": 100}
        return shown

    # -- the methods -------------------------------------------------------------

    async def get(self, ctx: Any, params: TaskIdParams) -> dict[str, Any]:
        task = self.find(params.task_id)
        modern = ctx.protocol_version == MODERN
        shown = self.view(params.task_id, modern)
        if modern and self.status(task) == "completed":
            shown["result"] = self.result(task)  # a 2026-07-28 DetailedTask inlines it
        return shown

    async def result_of(self, ctx: Any, params: TaskIdParams) -> dict[str, Any]:
        task = self.find(params.task_id)
        while self.status(task) == "working":  # tasks/result waits for the end (2025-11-25)
            await asyncio.sleep(0.05)
        if task.cancelled:
            raise MCPError(code=-32603, message="Task was cancelled")
        result = self.result(task)
        result["_meta"] = {"io.modelcontextprotocol/related-task": {"taskId": params.task_id}}
        return result

    async def list_all(self, ctx: Any, params: ListParams) -> dict[str, Any]:
        return {"tasks": [self.view(t, False) for t in self.tasks]}

    async def cancel(self, ctx: Any, params: TaskIdParams) -> dict[str, Any]:
        task = self.find(params.task_id)
        status = self.status(task)
        if ctx.protocol_version == MODERN:
            task.cancelled = task.cancelled or status == "working"
            return {}  # an acknowledgement; cancelling is cooperative
        if status != "working":
            raise MCPError(code=-32602, message=f"Cannot cancel task: already in terminal status '{status}'")
        task.cancelled = True
        return self.view(params.task_id, False)

    async def update(self, ctx: Any, params: TaskIdParams) -> dict[str, Any]:
        self.find(params.task_id)
        return {}


class TasksExtension(Extension):
    """The 2026-07-28 tasks extension, and the task methods of both revisions."""

    identifier = EXTENSION

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    def methods(self) -> list[MethodBinding]:
        s = self.store
        return [
            MethodBinding("tasks/get", TaskIdParams, s.get),
            MethodBinding("tasks/cancel", TaskIdParams, s.cancel),
            MethodBinding("tasks/result", TaskIdParams, s.result_of, protocol_versions=LEGACY),
            MethodBinding("tasks/list", ListParams, s.list_all, protocol_versions=LEGACY),
            MethodBinding("tasks/update", TaskIdParams, s.update, protocol_versions=frozenset({MODERN})),
        ]

    async def intercept_tool_call(self, params: CallToolRequestParams, ctx: Any, call_next: Any) -> Any:
        caps = ctx.session.client_capabilities
        declared = bool(caps and caps.extensions and EXTENSION in caps.extensions)
        if ctx.protocol_version == MODERN and params.name in self.store.tools and declared:
            task_id = self.store.create(params.name, params.arguments or {}, None)
            return {"resultType": "task", **self.store.view(task_id, True)}
        return await call_next(ctx)


def legacy_middleware(store: TaskStore) -> Callable[..., Any]:
    """A server middleware for 2025-11-25: task-augmented calls, and the advertisements."""

    async def middleware(ctx: Any, call_next: Any) -> Any:
        params = ctx.params or {}
        legacy = ctx.protocol_version != MODERN
        if legacy and ctx.method == "tools/call" and "task" in params and params.get("name") in store.tools:
            task = params.get("task") or {}
            ttl = task.get("ttl") if isinstance(task, dict) else None
            task_id = store.create(params["name"], dict(params.get("arguments") or {}), ttl)
            return {"task": store.view(task_id, False)}
        result = await call_next(ctx)
        if ctx.method == "initialize" and isinstance(result, dict):
            result.setdefault("capabilities", {})["tasks"] = {
                "list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}  # fmt: skip
        if ctx.method == "tools/list" and legacy and isinstance(result, dict):
            for tool in result.get("tools", []):
                if tool.get("name") in store.tools:
                    tool["execution"] = {"taskSupport": "optional"}
        return result

    return middleware
