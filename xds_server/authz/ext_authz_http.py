"""Envoy ext_authz over plain HTTP/1.1: the same decisions as the gRPC adapter, for less per call.

A gateway with `policyService.extAuthz: http` makes Envoy ask

    POST /check/<backend><original path> HTTP/1.1
    <the gateway's identity headers>          (the ext_authz filter's allow-list)
    <the request body>

(the method is the original request's). The answer is the decision itself:
`200` with no body allows; any other status is the reply the client gets,
here always a JSON-RPC error object with its `content-type` (and `retry-after`
for quotas), passed through by the filter.

Why a second transport: on a small machine a Python gRPC server costs more
per call (HTTP/2 framing, the C core handing each call to the event loop)
than the whole decision. This adapter parses with llhttp (httptools) on the
event loop and answers in one write; see docs/performance.md.

It carries no verified JWT payloads and no client certificate, so the policy
model refuses `extAuthz: http` on gateways that identify callers that way; a
request naming a backend with delegated credentials (which need the user's
token) is refused here too. Anything unexpected refuses: fail closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

from xds_server.authz.decide import CheckOutcome, check_call, failed_decision
from xds_server.authz.jsonrpc import error_body, request_id_of
from xds_server.core import errors
from xds_server.core.wire import CHECK_PREFIX

if TYPE_CHECKING:
    from xds_server.authz.service import PolicyService

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # above any gateway's body limit (10 MiB) plus headers
_ALLOW = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def backend_of(path: str) -> tuple[str, str]:
    """Split `/check/<backend><original path>` into (backend, original path); ("", path) if it is not one."""
    if not path.startswith(CHECK_PREFIX):
        return "", path
    rest = path[len(CHECK_PREFIX) :]
    name, slash, original = rest.partition("/")
    return name, slash + original


def answer(outcome: CheckOutcome) -> bytes:
    """The HTTP response that tells Envoy `outcome`."""
    if outcome.allowed:
        if outcome.set_headers or outcome.remove_headers:
            # Never allow without the credential the decision came with.
            raise ValueError("ext_authz over HTTP cannot set or remove upstream headers")
        return _ALLOW
    body = outcome.body.encode()
    lines = [f"HTTP/1.1 {outcome.http_status} {_reason(outcome.http_status)}",
             "content-type: application/json", f"content-length: {len(body)}"]  # fmt: skip
    lines += [f"{name}: {_header_value(value)}" for name, value in outcome.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _header_value(value: str) -> str:
    # Our own values (retry-after seconds); never let one end the header block.
    return value.replace("\r", " ").replace("\n", " ")


def decide(service: PolicyService, method: str, path: str, headers: Mapping[str, str], body: str) -> CheckOutcome:
    """One decision, as `decide.check_request` makes it for routes without delegated credentials."""
    backend, original_path = backend_of(path)
    service.checks[backend] += 1
    headers = {**headers, ":method": method, ":path": original_path}
    if backend and service.credentials.delegation(backend) is not None:
        kind = errors.POLICY_SERVICE_UNAVAILABLE
        return CheckOutcome(False, kind.http_status, error_body(
            request_id_of(body), kind,
            f"Backend '{backend}' has delegated credentials, which ext_authz over HTTP cannot attach: "
            "set its gateway's policyService.extAuthz to grpc"),
            log={"backend": backend, "allowed": False, "reason": kind.reason})  # fmt: skip
    return check_call(service.decider, route=backend, headers=headers, body=body)


class _Request:
    __slots__ = ("url", "headers", "body", "size")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0


class ExtAuthzHttpProtocol(asyncio.Protocol):
    """One connection from Envoy. Requests are answered in order, each as soon as it is complete.

    The connection's transport is in `open_transports` while it is open, so that
    stopping the service can close it (closing the server only stops accepting).
    """

    def __init__(self, service: PolicyService, open_transports: set[asyncio.BaseTransport]) -> None:
        self._service = service
        self._open = open_transports
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request = _Request()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._open.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._open.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        except httptools.HttpParserError as exc:
            log.warning("ext_authz (HTTP): unparseable request from %s: %s", self._peer(), exc)
            self._fail(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = _Request()

    def on_url(self, url: bytes) -> None:
        self._request.url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._request.headers
        # Repeated headers are joined, as Envoy joins them for the gRPC CheckRequest.
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def on_body(self, body: bytes) -> None:
        self._grow(len(body))
        self._request.body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        method = self._parser.get_method().decode("latin-1")
        path = httptools.parse_url(request.url).path.decode("latin-1")
        body = b"".join(request.body).decode("utf-8", errors="replace")
        try:
            outcome = decide(self._service, method, path, request.headers, body)
            response = answer(outcome)
        except Exception:  # a bug must refuse the call, not let it through
            log.exception("ext_authz (HTTP): decision failed; refusing")
            outcome = failed_decision(body)
            response = answer(outcome)
        if self._transport is not None:
            self._transport.write(response)
            if not self._parser.should_keep_alive():
                self._transport.close()
        # Logged after the answer is on its way: Envoy need not wait for the log line.
        self._service.log_decision(outcome.log)

    # -- helpers -------------------------------------------------------------

    def _grow(self, n: int) -> None:
        self._request.size += n
        if self._request.size > MAX_REQUEST_BYTES:
            raise httptools.HttpParserError("request too large")

    def _fail(self, response: bytes) -> None:
        if self._transport is not None:
            self._transport.write(response)
            self._transport.close()

    def _peer(self) -> str:
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        return str(peer)
