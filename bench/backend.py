"""The demo MCP server for the benchmark: the same app, on a socket with TCP_NODELAY.

    python bench/backend.py --port 0     # prints `READY http://127.0.0.1:PORT/mcp`

Why not `python -m xds_server.demo.mcp_server` as is: it binds its own
listening socket with `socket.socket(AF_INET, SOCK_STREAM)`, whose `proto` is
0, and asyncio only sets TCP_NODELAY on accepted sockets whose proto is
IPPROTO_TCP. uvicorn writes a response's headers and body with two send()
calls, so on a keep-alive connection the body waits under Nagle for the ACK
of the headers, which the client delays by ~40 ms: every request after the
first on a connection took 42-47 ms (strace showed no TCP_NODELAY on the
accepted socket; a fresh connection per request, as curl makes, took 2 ms).
A benchmark over keep-alive connections would measure that timer, not the
server or the gateway. Here the app (`build_app`, `--json-response`) is the
demo server's; only the listening socket differs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from xds_server.demo.mcp_server import build_app


async def serve(host: str, port: int, path: str) -> None:
    import uvicorn

    app = build_app(path=path, json_response=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"READY http://{host}:{sock.getsockname()[1]}{path}", flush=True)
    await task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/mcp")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, args.path))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
