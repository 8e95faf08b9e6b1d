"""Regenerate the captured MCP list-response bodies in this folder (not a test).

    .venv/bin/python tests/unit/data/capture_list_bodies.py

Runs the demo MCP server (`xds_server.demo.mcp_server.build_app`) in process,
in SSE mode and in JSON mode, and saves the exact bytes the official SDK
answers to `tools/list`, `prompts/list`, `resources/list` and
`resources/templates/list` over both protocol revisions (2025-11-25 after a
real `initialize`, and 2026-07-28 with the `Mcp-Method` header and the
`_meta` keys). A paginating variant of the demo server (two tools per page, a
progress notification before each page when the request asks for progress)
shows the SDK's multi-event SSE framing: the 2026-07-28 transport answers
plain JSON unless the handler emits a notification first, so that variant is
the only way to get a 2026-07-28 `text/event-stream` list response.

Each file is named `<server>-<mode>-<revision>-<method>.<sse|json>`; the
extension is the response's content type. The 2026-07-28 answers of the
JSON-mode server are byte-identical to the SSE-mode ones, so only the latter
are kept.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
METHODS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")


def paginating_app(json_response: bool) -> Any:
    """The demo tools, two per `tools/list` page, with a progress notification per page."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings
    from mcp_types import ListToolsResult

    from xds_server.demo import mcp_server

    class Paginating(MCPServer):
        async def _handle_list_tools(self, ctx: Any, params: Any) -> Any:
            tools = await self.list_tools()
            start = int(params.cursor) if params is not None and params.cursor else 0
            meta = ctx.meta or {}  # a TypedDict
            token = meta.get("progress_token", meta.get("progressToken"))
            if token is not None:
                await ctx.session.send_progress_notification(
                    token, start, len(tools), "listing tools", related_request_id=ctx.request_id
                )
            end = start + 2
            return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)

    # Reuse the demo's tool definitions: build the demo server, then copy its tools over.
    demo = mcp_server.build_server("demo-github")
    server = Paginating(name="demo-github", version="1.0.0", log_level="WARNING")
    server._tool_manager = demo._tool_manager
    return server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=json_response,
        stateless_http=False,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


async def serve(app: Any) -> tuple[Any, asyncio.Task[None], str]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"


def modern_request(method: str, rid: int, params: dict[str, Any] | None = None) -> tuple[dict[str, str], bytes]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        **(params or {}).pop("_meta", {}),
    }
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**(params or {}), "_meta": meta}}
    headers = {**ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": method}
    return headers, json.dumps(body).encode()


async def legacy_session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "capture", "version": "1"}},
    }  # fmt: skip
    r = await http.post(url, json=init, headers=ACCEPT)
    r.raise_for_status()
    headers = {**ACCEPT, "mcp-protocol-version": LEGACY, "mcp-session-id": r.headers["mcp-session-id"]}
    r = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    r.raise_for_status()
    return headers


def save(name: str, response: httpx.Response) -> None:
    response.raise_for_status()
    ctype = response.headers["content-type"].split(";")[0].strip()
    ext = {"text/event-stream": "sse", "application/json": "json"}[ctype]
    path = HERE / f"{name}.{ext}"
    path.write_bytes(response.content)
    print(f"{path.name}: {len(response.content)} bytes")


async def capture() -> None:
    from xds_server.demo.mcp_server import build_app

    for mode, json_response in (("sse", False), ("json", True)):
        server, task, url = await serve(build_app(json_response=json_response))
        async with httpx.AsyncClient(trust_env=False) as http:
            for i, method in enumerate(METHODS, start=1):
                slug = method.replace("/", "-")
                headers, body = modern_request(method, i)
                modern = await http.post(url, content=body, headers=headers)
                if json_response:  # 2026-07-28 answers these in JSON whatever the mode: same bytes
                    assert modern.content == (HERE / f"demo-sse-modern-{slug}.json").read_bytes(), slug
                else:
                    save(f"demo-{mode}-modern-{slug}", modern)
                legacy = await legacy_session(http, url)
                payload = {"jsonrpc": "2.0", "id": i, "method": method}
                save(f"demo-{mode}-legacy-{slug}", await http.post(url, json=payload, headers=legacy))
        server.should_exit = True
        await task

    server, task, url = await serve(paginating_app(json_response=False))
    async with httpx.AsyncClient(trust_env=False) as http:
        headers, body = modern_request("tools/list", 7, {"_meta": {"progressToken": "p1"}, "cursor": "2"})
        save("paged-sse-modern-tools-list", await http.post(url, content=body, headers=headers))
        legacy = await legacy_session(http, url)
        payload = {"jsonrpc": "2.0", "id": "req-8", "method": "tools/list", "params": {"_meta": {"progressToken": 8}}}
        save("paged-sse-legacy-tools-list", await http.post(url, json=payload, headers=legacy))
    server.should_exit = True
    await task


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    asyncio.run(capture())
