"""Steady load from real SDK clients of both protocol revisions, every answer recorded.

    load = SteadyLoad(url, {"x-agent-id": "triage"}, [("whoami", {}), ("list_issues", {"repo": "acme/web"})])
    load.start()                  # one modern (2026-07-28) and one legacy (2025-11-25, session) client
    await load.wait_for(20)       # 20 more answers
    await load.stop()
    load.answers                  # [(mode, index of the call, answer)], answer: ("ok", text, is_error)
                                  #                                  or ("error", code, message)

Each client calls every one of `calls` in turn, then waits `interval_s`; with
`rounds`, each client stops after that many rounds (a fixed amount of work
at a fixed pace, whatever the machine's speed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import eventually
from tests.e2e.harness import mcp_client

MODES = ("modern", "legacy")
Answer = tuple[str, Any, Any]


async def answer_of(client: Any, tool: str, arguments: dict[str, Any]) -> Answer:
    """("ok", the first text, is_error) or ("error", code, message) of one tools/call."""
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as exc:
        return ("error", exc.code, str(exc))
    return ("ok", result.content[0].text, result.is_error)


@dataclass
class SteadyLoad:
    url: str
    headers: dict[str, str]
    calls: list[tuple[str, dict[str, Any]]]
    interval_s: float = 0.02
    rounds: int | None = None
    answers: list[tuple[str, int, Answer]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(mode), name=f"steady-{mode}") for mode in MODES]

    async def _run(self, mode: str) -> None:
        async with mcp_client(self.url, self.headers, mode) as client:  # type: ignore[arg-type]
            done = 0
            while not self._stop.is_set() and (self.rounds is None or done < self.rounds):
                for index, (tool, arguments) in enumerate(self.calls):
                    self.answers.append((mode, index, await answer_of(client, tool, arguments)))
                done += 1
                await asyncio.sleep(self.interval_s)

    async def finished(self) -> None:
        """Wait until every client has done its `rounds` (raises what a client raised)."""
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def failures(self) -> list[tuple[str, int, Answer]]:
        """Answers that are not a successful tool result."""
        return [a for a in self.answers if a[2][0] != "ok" or a[2][2]]

    def per_mode(self) -> dict[str, int]:
        return {mode: sum(1 for a in self.answers if a[0] == mode) for mode in MODES}

    async def wait_for(self, more: int, timeout: float = 30.0) -> None:
        target = len(self.answers) + more
        await eventually(self._reached(target), timeout, f"{more} more answers")

    def _reached(self, target: int) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            for task in self._tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return len(self.answers) >= target

        return probe
