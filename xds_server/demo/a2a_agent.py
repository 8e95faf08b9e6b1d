"""A demo A2A agent, built on the official a2a-sdk (1.x), used as a test backend for A2A traffic.

One JSON-RPC endpoint (POST /) speaks both protocol generations: 1.0 (methods
`SendMessage`, `SendStreamingMessage`, `GetTask`, `CancelTask`, ...) and, through
the SDK's compat adapter, 0.3 (`message/send`, `message/stream`, `tasks/get`,
`tasks/cancel`, ...). The card (GET /.well-known/agent-card.json) decides which one
an SDK client picks: its interface advertises protocol_version "1.0", or "0.3.0"
with `--v03` (the served JSON then also carries the 0.3 top-level fields `url`,
`protocolVersion`, `preferredTransport`, and a 1.x `ClientFactory` picks its 0.3
compat transport).

Every message creates a task (submitted -> working -> artifacts -> a final state),
so every answer carries a task id and a context id. The user text decides:
  "count N"  N artifact updates, `COUNT_DELAY` apart, then completed (N capped at `MAX_COUNT`);
  "slow"     stays working for `SLOW_SECONDS` unless cancelled (CancelTask / tasks/cancel);
  anything else: one artifact "[NAME] echo: <text>", then completed.
Every artifact text starts with "[NAME] " so tests with several agents can tell which one answered.

GET /_calls lists every JSON-RPC request that reached the app, oldest first, as
`{"method", "task_id" (only when the params name one), "params", "version" (the
A2A-Version header or null)}`; DELETE /_calls empties the list. A request denied
by a gateway never shows up there.

CLI: python -m xds_server.demo.a2a_agent --port N [--host 127.0.0.1] [--name NAME]
         [--public-url URL] [--v03]
Prints `READY http://host:port/` on stdout once it accepts requests (`--port 0` lets
the kernel choose; the line carries the real port, and so does the default public URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from a2a.helpers import get_message_text, new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_NAME = "demo-agent"
PROTOCOL_VERSION_1_0 = "1.0"
PROTOCOL_VERSION_0_3 = "0.3.0"
SLOW_SECONDS = 30.0
COUNT_DELAY = 0.05
MAX_COUNT = 100

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_COUNT = re.compile(r"count\s+(\d+)", re.IGNORECASE)


def _skills(extended: bool) -> list[AgentSkill]:
    skills = [
        AgentSkill(id="echo", name="Echo", description="Answers with the text it was sent.", tags=["demo"],
                   examples=["hello"]),
        AgentSkill(id="count", name="Count", description="'count N' streams N artifact updates.", tags=["demo"],
                   examples=["count 3"]),
        AgentSkill(id="slow", name="Slow", description="'slow' keeps working until cancelled (30 s at most).",
                   tags=["demo"], examples=["slow"]),
    ]  # fmt: skip
    if extended:
        skills.append(AgentSkill(id="admin", name="Admin", description="Only on the extended card.", tags=["admin"]))
    return skills


def build_card(name: str, public_url: str, v03: bool, extended: bool = False) -> AgentCard:
    """Return the agent's card: one JSON-RPC interface at `public_url`, protocol "0.3.0" if `v03` else "1.0".

    Skills echo, count and slow (plus admin when `extended`); streaming and the extended card are advertised.
    """
    return AgentCard(
        name=name,
        description=f"Demo A2A agent {name}: echo, count N, slow.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=public_url,
                protocol_binding="JSONRPC",
                protocol_version=PROTOCOL_VERSION_0_3 if v03 else PROTOCOL_VERSION_1_0,
            )
        ],
        capabilities=AgentCapabilities(streaming=True, extended_agent_card=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=_skills(extended),
    )


class DemoAgentExecutor(AgentExecutor):
    """Turns every message into a task; the text picks echo, count N or slow (module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Publish the task (state submitted), then its status and artifact updates, ending in completed.

        The submitted step is the Task itself, not `TaskUpdater.submit()`: the SDK's request handler
        rejects a status update for a task it has not seen (InvalidAgentResponseError). A cancelled
        "slow" task ends in `cancel` below; this coroutine is then cancelled by the SDK.
        """
        assert context.task_id is not None and context.context_id is not None  # the SDK fills both in
        if context.current_task is None:  # a new task: the SDK wants the Task itself before any update
            history = [context.message] if context.message is not None else []
            await event_queue.enqueue_event(
                new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
            )
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        text = get_message_text(context.message).strip() if context.message is not None else ""
        await updater.start_work()
        if match := _COUNT.fullmatch(text):
            total = min(int(match.group(1)), MAX_COUNT)
            for i in range(1, total + 1):
                await asyncio.sleep(COUNT_DELAY)
                await updater.add_artifact([new_text_part(f"[{self.name}] count {i}/{total}")], name=f"count-{i}")
        elif text.lower() == "slow":
            await asyncio.sleep(SLOW_SECONDS)
            await updater.add_artifact([new_text_part(f"[{self.name}] slow: done")], name="slow")
        else:
            await updater.add_artifact([new_text_part(f"[{self.name}] echo: {text}")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Mark the task canceled (with a status message naming this agent); the SDK then stops `execute`."""
        assert context.task_id is not None and context.context_id is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel(updater.new_agent_message([new_text_part(f"[{self.name}] canceled")]))


def _task_id(params: Any) -> str | None:
    """The task a JSON-RPC request names, in either generation: params.id / taskId / message.taskId."""
    if not isinstance(params, dict):
        return None
    for value in (params.get("taskId"), params.get("id"), (params.get("message") or {}).get("taskId")):
        if isinstance(value, str) and value:
            return value
    return None


class CallLogMiddleware:
    """ASGI middleware: record each JSON-RPC request POSTed to `rpc_path` in `calls`, then pass it on.

    The body is read in full and replayed to the wrapped app unchanged. Entries:
    {"method", "task_id" (when the params name a task), "params", "version"};
    batches give one entry per element; bodies that are not JSON give {"method": None}.
    """

    def __init__(self, app: ASGIApp, calls: list[dict[str, Any]], rpc_path: str = "/") -> None:
        self.app = app
        self.calls = calls
        self.rpc_path = rpc_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.rpc_path:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before the body ended
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        self._record(scope, body)

        replayed = False

        async def replay() -> ASGIMessage:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for http.disconnect

        await self.app(scope, replay, send)

    def _record(self, scope: Scope, body: bytes) -> None:
        version = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"a2a-version"), None)
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            self.calls.append({"method": None, "version": version})
            return
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(item, dict):
                continue
            entry: dict[str, Any] = {"method": item.get("method"), "params": item.get("params"), "version": version}
            if (task_id := _task_id(item.get("params"))) is not None:
                entry["task_id"] = task_id
            self.calls.append(entry)


def build_app(name: str, public_url: str, v03: bool) -> Starlette:
    """Return the agent as a Starlette app: card, JSON-RPC (1.0 and 0.3 on POST /), and /_calls.

    `public_url` is the interface URL on the card (where clients will POST); `v03` makes the card
    advertise protocol "0.3.0" instead of "1.0". The server accepts both generations either way.
    """
    card = build_card(name, public_url, v03)
    handler = DefaultRequestHandler(
        agent_executor=DemoAgentExecutor(name),
        task_store=InMemoryTaskStore(),
        agent_card=card,
        extended_agent_card=build_card(name, public_url, v03, extended=True),
    )
    calls: list[dict[str, Any]] = []

    async def list_calls(request: Request) -> Response:
        if request.method == "DELETE":
            calls.clear()
            return Response(status_code=204)
        return JSONResponse(calls)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await handler.aclose()  # cancel running tasks (a "slow" one) instead of leaving them pending

    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True),
        Route("/_calls", list_calls, methods=["GET", "DELETE"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(CallLogMiddleware, calls=calls)], lifespan=lifespan)


async def serve(*, host: str, port: int, name: str = DEFAULT_NAME, public_url: str | None = None,
                v03: bool = False) -> None:  # fmt: skip
    """Serve until SIGINT/SIGTERM; print `READY http://host:port/` once accepting requests.

    `public_url` defaults to that same URL (with the real port when `port` is 0).
    """
    import uvicorn

    # Bind first so `--port 0` works and the default public URL carries the real port. IPPROTO_TCP so
    # asyncio sets TCP_NODELAY (see mcp_server.serve).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    shown_host = f"[{host}]" if ":" in host else host
    local_url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    app = build_app(name, public_url or local_url, v03)
    # Open SSE streams (a streamed "slow" task) should not hold up shutdown.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"READY {local_url}", flush=True)
    await task


def main(argv: list[str] | None = None) -> int:
    """Parse the CLI (module docstring) and serve."""
    parser = argparse.ArgumentParser(prog="python -m xds_server.demo.a2a_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--name", default=DEFAULT_NAME, help="agent name, on the card and in every artifact")
    parser.add_argument(
        "--public-url", default=None, help="interface URL on the card (default: http://HOST:PORT/), e.g. the gateway's"
    )
    parser.add_argument("--v03", action="store_true", help='advertise protocol "0.3.0" instead of "1.0" on the card')
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(host=args.host, port=args.port, name=args.name, public_url=args.public_url, v03=args.v03))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
