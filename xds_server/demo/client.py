"""Try the gateway with the official MCP SDK client, as a given agent.

    python -m xds_server.demo.client --agent triage list
    python -m xds_server.demo.client --agent triage call list_issues repo=acme/web
    python -m xds_server.demo.client --agent triage call delete_repo repo=acme/web    # denied
    python -m xds_server.demo.client --agent triage --legacy read docs://readme

Prints the result, or the JSON-RPC error (code, message, data) the gateway
answered with; exits 0 on success, 3 on a JSON-RPC error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

DEFAULT_URL = "http://127.0.0.1:10000/mcp/github"


def _arguments(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values that parse as JSON (numbers, true, lists) are taken as JSON."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"argument {pair!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


async def _run(args: argparse.Namespace) -> int:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    headers = {args.header: args.agent} if args.agent else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0), trust_env=False)
    try:
        async with http, Client(streamable_http_client(args.url, http_client=http),
                                mode="legacy" if args.legacy else "auto") as client:  # fmt: skip
            if args.action == "list":
                tools = await client.list_tools()
                for tool in tools.tools:
                    print(f"{tool.name}: {tool.description or ''}".strip())
            elif args.action == "call":
                result = await client.call_tool(args.target, _arguments(args.rest))
                for item in result.content:
                    print(getattr(item, "text", item))
            elif args.action == "read":
                resource = await client.read_resource(args.target)
                for part in resource.contents:
                    print(getattr(part, "text", part))
            elif args.action == "prompt":
                prompt = await client.get_prompt(args.target, _arguments(args.rest))
                for message in prompt.messages:
                    print(getattr(message.content, "text", message.content))
    except BaseException as exc:  # the SDK wraps errors in exception groups
        error = _find(exc, MCPError)
        if error is None:
            raise
        print(json.dumps({"code": error.code, "message": error.message, "data": error.data}, indent=2))
        return 3
    return 0


def _find(exc: BaseException, kind: type[BaseException]) -> Any:
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        if (found := _find(inner, kind)) is not None:
            return found
    return _find(exc.__cause__, kind) if exc.__cause__ is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xds_server.demo.client", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"gateway MCP URL (default {DEFAULT_URL})")
    parser.add_argument("--agent", help="the agent to act as (sent in the identity header)")
    parser.add_argument("--header", default="x-agent-id", help="the gateway's trusted identity header")
    parser.add_argument("--legacy", action="store_true", help="speak 2025-11-25 (initialize + Mcp-Session-Id)")
    parser.add_argument("action", choices=("list", "call", "read", "prompt"))
    parser.add_argument("target", nargs="?", help="tool name, resource URI or prompt name")
    parser.add_argument("rest", nargs="*", help="key=value arguments")
    args = parser.parse_args(argv)
    if args.action != "list" and not args.target:
        parser.error(f"{args.action} needs a target")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
