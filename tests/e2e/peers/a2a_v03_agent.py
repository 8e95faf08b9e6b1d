"""A real A2A 0.3 agent (a2a-sdk 0.3.x), for the end-to-end tests: run in a virtualenv of its own.

a2a-sdk 0.3 and 1.x are the same distribution, so this cannot share the
project's environment: `make test` builds `.venv-a2a03` with a2a-sdk 0.3.26
and uvicorn, and tests/e2e/test_a2a.py starts this script with it. It
imports nothing of the project.

    .venv-a2a03/bin/python tests/e2e/peers/a2a_v03_agent.py --port N [--name NAME]

Prints `READY http://127.0.0.1:N/` once it accepts connections. A message
"slow" stays working until canceled (or 30 s); "count N" streams N
artifacts; anything else is echoed as one artifact "[NAME] echo: <text>".
Every JSON-RPC request is recorded and listed at GET /_calls (DELETE
empties it): {"method", "task_id" (params.id, else the message's taskId),
"version" (the A2A-Version header, if any)}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import Any

import uvicorn
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.apps import A2AStarletteApplication
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentSkill, Part, TextPart
from a2a.utils import new_agent_text_message, new_task
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CALLS: list[dict[str, Any]] = []


class Executor(AgentExecutor):
    def __init__(self, name: str) -> None:
        self.name = name
        self.cancels: dict[str, asyncio.Event] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task or new_task(context.message)  # type: ignore[arg-type]
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        text = context.get_user_input().strip()
        await updater.start_work()
        if text == "slow":
            stop = self.cancels.setdefault(task.id, asyncio.Event())
            try:
                await asyncio.wait_for(stop.wait(), 30)
            except TimeoutError:
                pass
            return
        if text.startswith("count "):
            for i in range(1, int(text.split()[1]) + 1):
                count = int(text.split()[1])
                await updater.add_artifact([Part(root=TextPart(text=f"[{self.name}] count {i}/{count}"))],
                                           name=f"count-{i}")  # fmt: skip
                await asyncio.sleep(0.05)
        else:
            await updater.add_artifact([Part(root=TextPart(text=f"[{self.name}] echo: {text}"))], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or ""
        self.cancels.setdefault(task_id, asyncio.Event()).set()
        updater = TaskUpdater(event_queue, task_id, context.context_id or "")
        await updater.cancel(new_agent_text_message(f"[{self.name}] canceled", context.context_id, task_id))


def build(name: str, url: str) -> Any:
    card = AgentCard(
        name=name, description=f"A2A 0.3 test agent {name}", url=url, version="1.0.0",
        default_input_modes=["text"], default_output_modes=["text"],
        capabilities=AgentCapabilities(streaming=True),
        skills=[AgentSkill(id="echo", name="Echo", description="Answers with what it was sent.", tags=["test"])],
    )  # fmt: skip
    handler = DefaultRequestHandler(agent_executor=Executor(name), task_store=InMemoryTaskStore())
    app = A2AStarletteApplication(agent_card=card, http_handler=handler).build()

    async def calls(request: Request) -> Response:
        if request.method == "DELETE":
            CALLS.clear()
        return JSONResponse(CALLS)

    app.router.routes.insert(0, Route("/_calls", calls, methods=["GET", "DELETE"]))

    async def record(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            try:
                request = json.loads(body)
                params = request.get("params") or {}
                task_id = params.get("id") or (params.get("message") or {}).get("taskId")
                version = dict(scope["headers"]).get(b"a2a-version", b"").decode() or None
                CALLS.append({"method": request.get("method"), "task_id": task_id, "version": version})
            except (ValueError, AttributeError):
                CALLS.append({"method": None, "task_id": None, "version": None})
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await app(scope, replay, send)
        return await app(scope, receive, send)

    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="oldtimer")
    args = parser.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    server = uvicorn.Server(uvicorn.Config(build(args.name, url), log_level="warning", lifespan="off"))

    async def serve() -> None:
        sock.listen(64)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"READY {url}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
