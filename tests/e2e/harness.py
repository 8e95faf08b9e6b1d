"""Reusable pieces for tests that run real processes: MCP backends, Envoy, clients.

Everything binds 127.0.0.1 with ports chosen at run time, and waits on
readiness (a stdout line, a port, the admin API) instead of sleeping. Every
process is stopped by its PID (SIGTERM, then SIGKILL) from fixture
finalizers, so a failing test does not leak processes. The fixtures that use
these live in tests/conftest.py.

Async tests share one session-scoped event loop with any in-process servers
(ADS, ext_authz), so the helpers a test awaits (`mcp_client`, `raw_post`)
never block that loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import httpx

import xds_server
from xds_server.runtime.ports import wait_for_port
from xds_server.runtime.processes import stop_process

REPO_ROOT = Path(xds_server.__file__).resolve().parent.parent
MODERN_PROTOCOL_VERSION = "2026-07-28"
_OUTPUT_TAIL_CHARS = 4000


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus PYTHONPATH=repo root, so `-m xds_server...` imports
    this checkout even when the package is not installed; unbuffered output so a
    readiness line is seen as soon as it is printed."""
    env = dict(os.environ)
    parts = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ManagedProcess:
    """A subprocess with its output captured to `log_path` and kept in memory.

    stdout and stderr are merged and drained by a reader thread (a full pipe
    would otherwise block the child). `start()` returns once a line matches
    `ready_line` (a regex) and/or `ready_port` accepts connections, and raises
    with the output tail if the process exits or `timeout` passes first.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._new_line = threading.Condition(self._lock)
        self._reader: threading.Thread | None = None

    def start(
        self,
        *,
        ready_line: str | None = None,
        ready_port: tuple[str, int] | None = None,
        timeout: float = 15.0,
    ) -> str | None:
        """Start the process and wait until it is ready; return the matching line (if any)."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal Ctrl-C goes to pytest, which then stops us cleanly
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(target=self._drain, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        matched = self._wait_line(re.compile(ready_line), deadline) if ready_line else None
        if ready_port is not None:
            self._wait_port(ready_port, deadline)
        return matched

    def _drain(self, stream: IO[bytes]) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                log.write(line)
                log.flush()
                with self._lock:
                    self._lines.append(line.rstrip("\n"))
                    self._new_line.notify_all()
        with self._lock:
            self._new_line.notify_all()  # EOF: wake waiters so they see the exit

    def _wait_line(self, pattern: re.Pattern[str], deadline: float) -> str:
        seen = 0
        with self._lock:
            while True:
                for line in self._lines[seen:]:
                    if pattern.search(line):
                        return line
                seen = len(self._lines)
                self._raise_if_exited(f"a line matching {pattern.pattern!r}", locked=True)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._describe(f"no line matching {pattern.pattern!r}", locked=True))
                self._new_line.wait(min(remaining, 0.1))

    def _wait_port(self, address: tuple[str, int], deadline: float) -> None:
        while True:
            self._raise_if_exited(f"port {address[0]}:{address[1]}")
            try:
                wait_for_port(*address, timeout=min(0.2, max(deadline - time.monotonic(), 0.0)))
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(self._describe(f"port {address[0]}:{address[1]} not open")) from None

    def _raise_if_exited(self, waiting_for: str, *, locked: bool = False) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(
                self._describe(f"exited with {self._proc.returncode} before {waiting_for}", locked=locked)
            )

    def _describe(self, what: str, *, locked: bool = False) -> str:
        return f"{self.name} (pid {self.pid}): {what}; output tail:\n{self.output(locked=locked)[-_OUTPUT_TAIL_CHARS:]}"

    def output(self, *, locked: bool = False) -> str:
        """Everything the process printed so far (stdout and stderr merged)."""
        if locked:
            return "\n".join(self._lines)
        with self._lock:
            return "\n".join(self._lines)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the PID, SIGKILL it after `timeout`; return the exit code. Idempotent."""
        code = stop_process(self._proc, timeout)
        if self._reader is not None:
            self._reader.join(timeout=2)
        return code


@dataclass
class McpBackend:
    """A running demo MCP server (`xds_server.demo.mcp_server`)."""

    process: ManagedProcess
    url: str
    host: str
    port: int
    path: str
    name: str
    request_log_path: Path

    def requests(self) -> list[dict[str, Any]]:
        """The HTTP requests the server received, oldest first (see RequestLogMiddleware).

        Each: {time, method, path, query, headers (lower-case names), body (text)}.
        A request is logged before the MCP app handles it, so once a client has
        its answer the line is there.
        """
        try:
            text = self.request_log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def rpc_methods(self) -> list[str | None]:
        """The JSON-RPC `method` of each logged request (None for GET/DELETE or non-JSON)."""
        out: list[str | None] = []
        for req in self.requests():
            try:
                body = json.loads(req["body"]) if req["body"] else None
            except ValueError:
                body = None
            out.append(body.get("method") if isinstance(body, dict) else None)
        return out

    def tool_calls(self, tool: str) -> int:
        """How many `tools/call`s of `tool` the server received."""
        count = 0
        for req in self.requests():
            try:
                body = json.loads(req["body"]) if req["body"] else None
            except ValueError:
                continue
            if isinstance(body, dict) and body.get("method") == "tools/call" and body["params"]["name"] == tool:
                count += 1
        return count

    def clear_requests(self) -> None:
        """Forget what was logged so far (truncate the log)."""
        self.request_log_path.write_text("", encoding="utf-8")

    def stop(self) -> int | None:
        return self.process.stop()


_READY_RE = r"^READY (http://\S+)$"


@dataclass
class A2aAgent:
    """One demo A2A agent process (xds_server/demo/a2a_agent.py, or a2a-sdk 0.3's in tests/e2e/peers):
    where it listens, and what reached it (its /_calls)."""

    name: str
    url: str
    process: ManagedProcess

    def calls(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.url + "_calls").json())

    def clear(self) -> None:
        httpx.delete(self.url + "_calls").raise_for_status()

    def card(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + ".well-known/agent-card.json").json())

    def stop(self) -> int | None:
        return self.process.stop()


def start_a2a_agent(workdir: Path, name: str, *, v03: bool = False) -> A2aAgent:
    """The demo A2A agent (a2a-sdk 1.x; `v03`: advertising A2A 0.3) on a port it picks (its READY line names it)."""
    argv = [
        sys.executable,
        "-m",
        "xds_server.demo.a2a_agent",
        "--port",
        "0",
        "--name",
        name,
        *(["--v03"] if v03 else []),
    ]
    process = ManagedProcess(argv, log_path=Path(workdir) / f"{name}.log", env=python_env(), cwd=REPO_ROOT, name=name)
    line = process.start(ready_line=r"^READY ", timeout=20)
    assert line is not None
    return A2aAgent(name, line.split()[1], process)


def start_mcp_backend(
    workdir: Path,
    *,
    name: str = "demo-github",
    path: str = "/mcp",
    host: str = "127.0.0.1",
    json_response: bool = False,
    timeout: float = 20.0,
    port: int = 0,
    extra_args: tuple[str, ...] = (),
) -> McpBackend:
    """Start the demo MCP server on a kernel-chosen port and wait for its READY line.

    `--port 0` and the port read back from READY avoid the race of picking a
    free port first. Files go to `workdir`: `<name>.requests.jsonl`, `<name>.log`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    request_log = workdir / f"{name}.requests.jsonl"
    argv = [
        sys.executable, "-m", "xds_server.demo.mcp_server",
        "--host", host, "--port", str(port), "--path", path,
        "--name", name, "--request-log", str(request_log),
    ]  # fmt: skip
    if json_response:
        argv.append("--json-response")
    argv += list(extra_args)
    proc = ManagedProcess(argv, log_path=workdir / f"{name}.log", env=python_env(), cwd=REPO_ROOT, name=name)
    try:
        line = proc.start(ready_line=_READY_RE, timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    assert line is not None
    url = re.match(_READY_RE, line).group(1)  # type: ignore[union-attr]
    parsed = httpx.URL(url)
    assert parsed.port is not None
    return McpBackend(proc, url, parsed.host, parsed.port, path, name, request_log)


ClientMode = Literal["modern", "legacy"]

#: How a client checks the gateway's certificate: an SSLContext (used as is), a CA bundle file,
#: True (the system's CAs) or False (no check).
TlsVerify = ssl.SSLContext | str | Path | bool
#: A client certificate: (certificate file, private key file).
ClientCert = tuple[str | Path, str | Path]


def ssl_context(verify: TlsVerify = True, cert: ClientCert | None = None) -> ssl.SSLContext:
    """A client SSLContext: `verify` as in `TlsVerify`, `cert` loaded into it (into the caller's
    own context, if `verify` is one)."""
    if isinstance(verify, ssl.SSLContext):
        context = verify
    elif verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=None if verify is True else str(verify))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def client_tls(verify: TlsVerify = True, cert: ClientCert | None = None) -> ssl.SSLContext | bool:
    """What to pass as httpx's (and httpx2's) `verify=`: without a client certificate a bool
    goes through unchanged (httpx's own defaults), anything else becomes an SSLContext."""
    if cert is None and isinstance(verify, bool):
        return verify
    return ssl_context(verify, cert)


def tls_peer_certificate(
    host: str, port: int, *, verify: TlsVerify = True, cert: ClientCert | None = None, timeout: float = 5.0
) -> bytes:
    """Open a new TLS connection and return the server's certificate (DER). Blocking: run it in a thread
    from async tests. Raises ssl.SSLError (or OSError) when the handshake fails."""
    context = ssl_context(verify, cert)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def tls_exchange(
    host: str,
    port: int,
    data: bytes,
    *,
    verify: TlsVerify = True,
    cert: ClientCert | None = None,
    timeout: float = 5.0,
) -> bytes:
    """Send `data` over a new TLS connection and return the first bytes of the answer. Blocking.

    With TLS 1.3 a server that refuses the client's certificate does so after
    the client considers the handshake done, so the refusal (an alert, or the
    connection closed) shows on the first read: this raises ssl.SSLError
    (ssl.SSLEOFError for a close without an alert) in that case too.
    """
    context = ssl_context(verify, cert)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(data)
            answer = tls.recv(65536)
    if not answer:
        raise ssl.SSLEOFError("the server closed the TLS connection without an answer")
    return answer


@contextlib.asynccontextmanager
async def mcp_client(
    url: str,
    headers: Mapping[str, str] | None = None,
    mode: ClientMode = "modern",
    *,
    timeout: float = 30.0,
    verify: TlsVerify = True,
    cert: ClientCert | None = None,
    **client_kwargs: Any,
) -> AsyncIterator[Any]:
    """A connected `mcp.Client` that sends `headers` on every HTTP request.

    For an https URL, `verify` checks the gateway's certificate (see
    `TlsVerify`) and `cert` is the client certificate to present (mTLS).

    mode "modern": the SDK default ("auto": `server/discover`, then 2026-07-28
    with no session); it fails loudly if the client fell back to the legacy
    handshake, which "auto" would otherwise do silently when discover is
    refused. mode "legacy": `initialize` + `Mcp-Session-Id` (2025-11-25).
    `timeout` bounds each request's wait for its answer. Extra keyword
    arguments go to `mcp.Client`.
    """
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    if mode not in ("modern", "legacy"):
        raise ValueError(f"mode must be 'modern' or 'legacy', not {mode!r}")
    # The SDK's own client settings (long read timeout for SSE streams), plus our headers;
    # trust_env=False so a developer's proxy settings never see 127.0.0.1 traffic.
    http = httpx2.AsyncClient(
        headers=dict(headers or {}),
        timeout=httpx2.Timeout(30.0, read=300.0),
        trust_env=False,
        verify=client_tls(verify, cert),
    )
    async with http:
        # A caller-supplied http client is not closed by the transport: `async with http` does it.
        transport = streamable_http_client(url, http_client=http)
        client = Client(
            transport,
            mode="auto" if mode == "modern" else "legacy",
            read_timeout_seconds=timeout,
            **client_kwargs,
        )
        async with client:
            if mode == "modern" and client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
                raise AssertionError(f"expected a 2026-07-28 connection, got {client.protocol_version!r} (fell back)")
            yield client


DEFAULT_POST_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def _post_headers(headers: Mapping[str, str | None] | None) -> dict[str, str]:
    merged: dict[str, str | None] = {**DEFAULT_POST_HEADERS, **{k.lower(): v for k, v in (headers or {}).items()}}
    return {k: v for k, v in merged.items() if v is not None}


async def raw_post(
    url: str,
    body: bytes | str,
    headers: Mapping[str, str | None] | None = None,
    *,
    timeout: float = 10.0,
    verify: TlsVerify = True,
    cert: ClientCert | None = None,
) -> httpx.Response:
    """POST `body` exactly as given (no JSON encoding) and return the response, read in full.

    `headers` override the defaults (`content-type: application/json`,
    `accept: application/json, text/event-stream`), names compared
    case-insensitively; a value of None drops that default header.
    `verify` and `cert` are as for `mcp_client` (https URLs).
    """
    content = body.encode() if isinstance(body, str) else body
    async with httpx.AsyncClient(timeout=timeout, trust_env=False, verify=client_tls(verify, cert)) as http:
        return await http.post(url, content=content, headers=_post_headers(headers))


def raw_post_sync(
    url: str,
    body: bytes | str,
    headers: Mapping[str, str | None] | None = None,
    *,
    timeout: float = 10.0,
    verify: TlsVerify = True,
    cert: ClientCert | None = None,
) -> httpx.Response:
    """Blocking `raw_post`, for sync tests (never from a coroutine: it would block the loop)."""
    content = body.encode() if isinstance(body, str) else body
    with httpx.Client(timeout=timeout, trust_env=False, verify=client_tls(verify, cert)) as http:
        return http.post(url, content=content, headers=_post_headers(headers))


# ---------------------------------------------------------------- raw HTTP/1.1 and HTTP/2


async def raw_http1(port: int, request: bytes, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `request` as it is on a fresh connection; the status code and the body of the answer
    (read to its content-length, or to the end of the connection without one)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")]  # fmt: skip
        read = reader.readexactly(lengths[0]) if lengths else reader.read()
        return int(head.split(b" ", 2)[1]), await asyncio.wait_for(read, timeout)
    finally:
        writer.close()


def _h2_exchange(port: int, headers: Sequence[tuple[str, str]], body: bytes, timeout: float) -> tuple[int, bytes]:
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, list(headers), end_stream=not body)
        if body:
            conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, answer = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"HTTP/2 connection closed before the answer ended (status {status})")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    answer += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return status, answer
            sock.sendall(conn.data_to_send())


async def raw_h2(port: int, headers: Sequence[tuple[str, str]], body: bytes = b"", *,
                 timeout: float = 10.0) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP/2 request (cleartext, prior knowledge) with `headers` exactly as listed, repeated
    names included (pseudo-headers first); the status and the body of the answer. Runs in a
    thread so the session's event loop (the in-process control plane) keeps running."""
    import asyncio

    return await asyncio.to_thread(_h2_exchange, port, headers, body, timeout)


# ---------------------------------------------------------------- MCP requests as bytes

MODERN_REVISION = "2026-07-28"
LEGACY_REVISION = "2025-11-25"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_REVISION,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def tools_call_request(mode: str, tool: str, arguments: dict[str, Any]) -> tuple[Any, list[tuple[str, str]], bytes]:
    """(id, MCP headers, body) of a tools/call in `mode` (modern | legacy); the id's JSON type
    differs per mode (7 and "req-7"), so that a test can check the gateway keeps it."""
    request_id: Any = 7 if mode == "modern" else "req-7"
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    headers = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    if mode == "modern":
        params["_meta"] = MODERN_META
        headers += [("mcp-protocol-version", MODERN_REVISION), ("mcp-method", "tools/call"), ("mcp-name", tool)]
    else:
        headers += [("mcp-protocol-version", LEGACY_REVISION)]
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()
    return request_id, headers, body


async def send_raw(port: int, transport: str, method: str, headers: Sequence[tuple[str, str]],
                   body: bytes = b"", *, path: str = "/mcp/github") -> tuple[int, bytes]:  # fmt: skip
    """One request over a fresh connection (transport h1 | h2), headers exactly as listed
    (repeated names kept); the status and the body of the answer."""
    if transport == "h2":
        pseudo = [(":method", method), (":scheme", "http"), (":authority", "gateway"), (":path", path)]
        return await raw_h2(port, pseudo + list(headers), body)
    head = http1_head(method, headers, len(body), path=path, close=True)
    return await raw_http1(port, head + body)


def http1_head(method: str, headers: Sequence[tuple[str, str]], content_length: int, *,
               path: str = "/mcp/github", close: bool = False) -> bytes:  # fmt: skip
    """An HTTP/1.1 request head with `headers` exactly as listed and the given content-length
    (which may promise more body than is then sent); `close` asks for the connection to close."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    connection = "connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nhost: gateway\r\n{lines}content-length: {content_length}\r\n{connection}\r\n".encode()
