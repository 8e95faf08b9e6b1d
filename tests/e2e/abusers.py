"""Abusive clients for soak tests and the soak benchmark: raw sockets, each in a loop until stopped.

Each abuser repeats one kind of abuse against the gateway's listener and
tallies how it was answered (the HTTP status, or "closed" when the gateway
closed the connection without an answer, or "reset" for a refused or reset
connection). Every abusive request that names a tool asks for repository
`MARKER/...`, so a test can check that none of them reached the backend.

    tally = Tally()
    stop = asyncio.Event()
    tasks = start_abusers(port, stop, tally, agent_header="x-agent-id", agent="triage")
    ...
    stop.set(); await asyncio.gather(*tasks)

Used by tests/e2e/test_soak.py and bench/soak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MARKER = "abuse"
PATH = "/mcp/github"
MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
_MAX_ANSWER_BYTES = 1 << 16  # a refusal is a short JSON-RPC error object
PAUSE_S = 0.05  # between two attempts of one abuser: abusive, not a benchmark of the test's own CPU


@dataclass
class Tally:
    """abuser name -> Counter of outcomes ("200", "431", "closed", "reset", ...)."""

    outcomes: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, abuser: str, outcome: str) -> None:
        self.outcomes[abuser][outcome] += 1

    def attempts(self, abuser: str) -> int:
        return sum(self.outcomes[abuser].values())


def _call(tool: str, request_id: int = 1, *, extra: str = "") -> bytes:
    arguments = json.dumps({"repo": f"{MARKER}/web"})
    return (
        f'{{"jsonrpc":"2.0","id":{request_id},"method":"tools/call","params":{{"name":"{tool}",'
        f'"arguments":{arguments}{extra},"_meta":{json.dumps(META)}}}}}'
    ).encode()


def _head(tool: str, length: int, headers: list[tuple[str, str]], *, path: str = PATH) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "host: gateway",
        "content-type: application/json",
        "accept: application/json, text/event-stream",
        f"mcp-protocol-version: {MODERN}",
        "mcp-method: tools/call",
        f"mcp-name: {tool}",
        *(f"{k}: {v}" for k, v in headers),
        f"content-length: {length}",
        "connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _exchange(port: int, data: bytes, *, timeout: float = 10.0, rpc_error: bool = False) -> str:
    """Send `data` on a new connection; the status of the answer, "closed" or "reset".

    With `rpc_error`, the whole answer is read (the request says `connection: close`) and the
    outcome is the status and the JSON-RPC error code of its body ("200 -32003", or "200 no error"):
    a policy refusal is an HTTP 200, as an allowed call is."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "reset"
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(_read_answer(reader) if rpc_error else reader.read(64), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return "reset"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not answer:
        return "closed"
    parts = answer.split(b" ", 2)
    if len(parts) < 2 or not answer.startswith(b"HTTP/"):
        return "garbled"
    status = parts[1].decode()
    return f"{status} {_rpc_error_code(answer)}" if rpc_error else status


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """One whole answer: its head, then as many bytes as its content-length says (else until the
    gateway closes, which Envoy delays by a second after a `connection: close` answer)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)  # fmt: skip
    if length is None:
        return head + await reader.read(_MAX_ANSWER_BYTES)
    return head + await reader.readexactly(min(length, _MAX_ANSWER_BYTES))


def _rpc_error_code(answer: bytes) -> str:
    """The JSON-RPC error code of an answer's body, or "no error" (an SSE body's first event counts)."""
    body = answer.partition(b"\r\n\r\n")[2]
    if body.startswith(b"event:") or body.startswith(b"data:"):
        body = next((line[5:] for line in body.splitlines() if line.startswith(b"data:")), b"")
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return "unreadable body"
    return str(error.get("code")) if isinstance(error, dict) else "no error"


Abuser = Callable[[int, list[tuple[str, str]]], Awaitable[str]]


async def _trickle(port: int, head: bytes, pieces: list[bytes]) -> str:
    """Send `head`, then `pieces` one every 0.25 s, until the gateway answers or closes."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "reset"
    try:
        writer.write(head)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(64), 0.25)
                return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
        return "never cut off"
    except OSError:
        return "reset"
    finally:
        writer.close()


async def slowloris(port: int, identity: list[tuple[str, str]]) -> str:
    """Header lines trickled until the gateway gives up (requestHeadersTimeout)."""
    return await _trickle(port, f"POST {PATH} HTTP/1.1\r\nhost: gateway\r\n".encode(), [b"x-slow: 1\r\n"] * 600)


async def trickled_body(port: int, identity: list[tuple[str, str]]) -> str:
    """A body sent a byte at a time, never finished (requestReceiveTimeout)."""
    body = _call("list_issues")
    return await _trickle(port, _head("list_issues", len(body), identity), [bytes([b]) for b in body[:-1]])


async def header_flood(port: int, identity: list[tuple[str, str]]) -> str:
    padding = [(f"x-pad-{i}", "p" * 64) for i in range(300)]
    body = _call("list_issues")
    return await _exchange(port, _head("list_issues", len(body), identity + padding) + body)


async def ambiguous_identity(port: int, identity: list[tuple[str, str]]) -> str:
    name = identity[0][0]
    body = _call("list_issues")
    return await _exchange(port, _head("list_issues", len(body), [(name, "mallory"), *identity]) + body)


async def unknown_agent(port: int, identity: list[tuple[str, str]]) -> str:
    body = _call("list_issues")
    return await _exchange(port, _head("list_issues", len(body), [(identity[0][0], "mallory")]) + body,
                           rpc_error=True)  # fmt: skip


async def denied_tool(port: int, identity: list[tuple[str, str]]) -> str:
    body = _call("delete_repo")
    return await _exchange(port, _head("delete_repo", len(body), identity) + body, rpc_error=True)


async def malformed_http(port: int, identity: list[tuple[str, str]]) -> str:
    body = _call("list_issues")
    head = _head("list_issues", len(body), identity).replace(b"\r\n\r\n", b"\r\ntransfer-encoding: chunked\r\n\r\n")
    return await _exchange(port, head + body)


async def deep_json(port: int, identity: list[tuple[str, str]]) -> str:
    body = _call("list_issues", extra=',"deep":' + "[" * 200 + "]" * 200)
    return await _exchange(port, _head("list_issues", len(body), identity) + body)


async def oversized_body(port: int, identity: list[tuple[str, str]]) -> str:
    body = _call("list_issues", extra=',"pad":"' + "x" * 200_000 + '"')
    return await _exchange(port, _head("list_issues", len(body), identity) + body)


async def garbage(port: int, identity: list[tuple[str, str]]) -> str:
    return await _exchange(port, os.urandom(512))


async def not_json(port: int, identity: list[tuple[str, str]]) -> str:
    body = b"{this is not json" + MARKER.encode()
    return await _exchange(port, _head("list_issues", len(body), identity) + body)


async def connection_churn(port: int, identity: list[tuple[str, str]]) -> str:
    """A connection opened and closed at once, with nothing sent."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "reset"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "opened"


#: name -> (abuser, how many run at once, the outcomes the gateway may answer with).
ABUSERS: dict[str, tuple[Abuser, int, frozenset[str]]] = {
    "slowloris": (slowloris, 4, frozenset({"408", "closed", "reset"})),
    "trickled_body": (trickled_body, 2, frozenset({"408", "closed", "reset"})),
    "header_flood": (header_flood, 1, frozenset({"431"})),
    "ambiguous_identity": (ambiguous_identity, 1, frozenset({"400"})),
    "unknown_agent": (unknown_agent, 1, frozenset({"200 -32001"})),  # a policy refusal: HTTP 200, a JSON-RPC error
    "denied_tool": (denied_tool, 1, frozenset({"200 -32003"})),
    "malformed_http": (malformed_http, 1, frozenset({"400"})),
    "deep_json": (deep_json, 1, frozenset({"400"})),
    "oversized_body": (oversized_body, 1, frozenset({"413", "closed", "reset"})),
    "garbage": (garbage, 1, frozenset({"400", "408", "closed", "reset"})),  # 408: bytes with no line end
    "not_json": (not_json, 1, frozenset({"400"})),
    "connection_churn": (connection_churn, 1, frozenset({"opened", "reset"})),
}


def start_abusers(port: int, stop: asyncio.Event, tally: Tally, *, agent_header: str, agent: str,
                  pause_s: float = PAUSE_S) -> list[asyncio.Task[None]]:  # fmt: skip
    """Every abuser of ABUSERS, as many of each as it says, looping until `stop` is set.

    `agent_header: agent` is a real agent's identity, which the abusers that
    need one send (so that they are refused for their abuse, not for being
    strangers)."""
    identity = [(agent_header, agent)]

    async def loop(name: str, abuser: Abuser) -> None:
        while not stop.is_set():
            tally.add(name, await abuser(port, identity))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause_s)

    return [
        asyncio.create_task(loop(name, abuser), name=f"abuser-{name}-{i}")
        for name, (abuser, copies, _) in ABUSERS.items()
        for i in range(copies)
    ]


def unexpected(tally: Tally) -> dict[str, dict[str, int]]:
    """Outcomes an abuser got that the gateway should never answer it with."""
    out: dict[str, dict[str, int]] = {}
    for name, (_, _, allowed) in ABUSERS.items():
        wrong = {k: v for k, v in tally.outcomes[name].items() if k not in allowed}
        if wrong:
            out[name] = wrong
    return out
