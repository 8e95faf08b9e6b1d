"""Envoy ext_authz over plain HTTP/1.1: the same decisions as the gRPC adapter, for less per call.

A gateway with `policyService.extAuthz: http` (the default) makes Envoy ask

    POST /check/<backend><original path> HTTP/1.1
    <the client's headers the service reads>   (the ext_authz filter's allow-list)
    x-agentxds-verified-jwt-<provider>: {...}  (each payload jwt_authn verified)
    x-agentxds-verified-peer: spiffe://...     (the client certificate's URI SANs)
    <the request body>

(the method is the original request's; with the gateway's
`policyService.secret`, also `x-agentxds-policy-service-secret`, without
which a request about that gateway, a check, a virtual server's or a
discovery request, is refused). The verified headers are Envoy's
own: it adds them to the check request (`authorization_request.headers_to_add`)
and never forwards a client's header of those names, which its allow-list
does not name (translate/policy_service.py). The answer is the decision
itself: `200` allows, with the delegated credential to set upstream and
`x-envoy-auth-headers-to-remove` naming the caller's credentials, where the
route has one; any other status is the reply the client gets, here always a
JSON-RPC error object with its `content-type` (and `retry-after` for
quotas), passed through by the filter.

Why this transport: on a small machine a Python gRPC server costs more per
call (HTTP/2 framing, the C core handing each call to the event loop) than
the whole decision. This adapter parses with llhttp (httptools) on the event
loop and answers in one write; see docs/performance.md. Anything unexpected
refuses: fail closed. A peer that is not Envoy gets little: a request without
its gateway's secret is answered (`connection: close`) and its connection
closed; a request's headers must be complete REQUEST_DEADLINE_S after its
first byte, and so must the whole of a request without the secret; a new
connection must begin its first request within FIRST_REQUEST_DEADLINE_S
(twice the idle time after which Envoy closes its own connections here, so
Envoy never reuses one being closed); headers are counted as sent (at most
MAX_HEADERS, repeated ones joined once complete); a trailer is never read;
a body that is not UTF-8 is refused unread. The same port serves virtual MCP servers' requests
(`/vmcp/...`, authz/vmcp/http.py) and discovery (`/discover/...`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

from xds_server.authz import discovery
from xds_server.authz.decide import (
    CheckOutcome,
    check_call,
    check_request,
    failed_decision,
    unproven_caller,
    unreadable_body,
)
from xds_server.authz.vmcp.front import Reply
from xds_server.authz.vmcp.http import http_head, http_response, virtual_reply
from xds_server.core.wire import (
    AUTH_HEADERS_TO_REMOVE,
    CHECK_PREFIX,
    DISCOVER_PREFIX,
    POLICY_HTTP_IDLE_TIMEOUT_S,
    POLICY_SERVICE_SECRET_HEADER,
    REPLY_STATUS_HEADER,
    VERIFIED_JWT_HEADER_PREFIX,
    VERIFIED_PEER_HEADER,
    VMCP_PREFIX,
)

if TYPE_CHECKING:
    from xds_server.authz.service import PolicyService

log = logging.getLogger(__name__)

#: As sent: above any gateway's body limit (10 MiB) plus its header limit (8 MiB), which a virtual
#: server's request, forwarded whole, may reach.
MAX_REQUEST_BYTES = 20 * 1024 * 1024
MAX_HEADERS = 10_100  # above any gateway's maxHeaders (10,000) plus the headers Envoy adds
#: A request's headers must be complete this long after its first byte, and a request without its
#: gateway's secret must be complete. Envoy sends headers at once; only a peer that is not Envoy
#: trickles them. (Envoy's own body comes at its client's pace, bounded by the gateway's limits.)
REQUEST_DEADLINE_S = 10.0
#: A new connection's first request must begin this long after it opened: above the idle time after
#: which Envoy closes its connections to this port itself (translate/policy_service.py).
FIRST_REQUEST_DEADLINE_S = 2.0 * POLICY_HTTP_IDLE_TIMEOUT_S
_SWEEP_EVERY_S = 1.0
_MAX_STREAM_BUFFER = 1024 * 1024  # unsent bytes of a stream before its reader counts as gone
_ALLOW = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
#: What a check whose answer could not be written gets (a fixed refusal: Envoy refuses the call).
_FAILED = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def backend_of(path: str) -> tuple[str, str]:
    """Split `/check/<backend><original path>` into (backend, original path); ("", path) if it is not one."""
    if not path.startswith(CHECK_PREFIX):
        return "", path
    rest = path[len(CHECK_PREFIX) :]
    name, slash, original = rest.partition("/")
    return name, slash + original


def answer(outcome: CheckOutcome) -> bytes:
    """The HTTP response that tells Envoy `outcome`: an allowed one carries the credential to set
    upstream (a header Envoy's allow-list copies) and the caller's headers to remove."""
    if outcome.allowed:
        if not (outcome.set_headers or outcome.remove_headers):
            return _ALLOW
        lines = ["HTTP/1.1 200 OK", "content-length: 0"]
        lines += [f"{name}: {_header_value(value)}" for name, value in outcome.set_headers.items()]
        if outcome.remove_headers:
            lines.append(f"{AUTH_HEADERS_TO_REMOVE}: {','.join(outcome.remove_headers)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    body = outcome.body.encode()
    status, headers = outcome.http_status, dict(outcome.headers)
    if status >= 500:  # Envoy would take it for the service failing (core/wire.py)
        status, headers[REPLY_STATUS_HEADER] = 403, str(status)
    elif status == 200:  # Envoy would take it for "allowed": a refusal never goes out so
        status = 403
    lines = [f"HTTP/1.1 {status} {_reason(status)}", "content-type: application/json", f"content-length: {len(body)}"]
    lines += [f"{name}: {_header_value(value)}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _header_value(value: str) -> str:
    # Our own values (retry-after seconds); never let one end the header block.
    return value.replace("\r", " ").replace("\n", " ")


class UnreadableIdentity(ValueError):
    """A verified-identity header that is not what Envoy writes: the check is refused."""


def _verified_payload(name: str, value: str) -> dict[str, Any]:
    """The JWT payload Envoy wrote in header `name` (parsed on every call: a dict shared between calls
    could be changed by one of them)."""
    try:
        payload = json.loads(value.encode("latin-1").decode("utf-8"))
    except (UnicodeError, ValueError):
        raise UnreadableIdentity(f"{name} is not a JSON payload") from None
    if not isinstance(payload, dict):
        raise UnreadableIdentity(f"{name} is not a JSON object")
    return payload


def verified_identity(headers: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Any], str | None]:
    """Split the check request's headers into (the client's headers, the JWT payloads Envoy verified by
    provider, the client certificate's first URI SAN).

    Only Envoy sets the verified headers (core/wire.py): it adds them to the check request itself
    and sends no client header of those names. Their values are Envoy's JSON (UTF-8, read here as
    the latin-1 text the HTTP parser gives)."""
    client: dict[str, str] = {}
    payloads: dict[str, Any] = {}
    peer: str | None = None
    for name, value in headers.items():
        if name.startswith(VERIFIED_JWT_HEADER_PREFIX):
            payloads[name[len(VERIFIED_JWT_HEADER_PREFIX) :]] = _verified_payload(name, value)
        elif name == VERIFIED_PEER_HEADER:
            # Envoy lists every URI SAN, joined with ','. An X.509-SVID carries exactly one; with
            # several (or a SAN holding a ',') the list cannot be read back unambiguously.
            sans = [san.strip() for san in value.split(",") if san.strip()]
            if len(sans) > 1:
                raise UnreadableIdentity(f"{name}: the client certificate has {len(sans)} URI SANs; an agent's "
                                         "certificate (an X.509-SVID) must have exactly one")  # fmt: skip
            peer = sans[0] if sans else None
        else:
            client[name] = value
    return client, payloads, peer


def decide(
    service: PolicyService, method: str, path: str, headers: Mapping[str, str], body: str
) -> CheckOutcome | Awaitable[CheckOutcome]:
    """One decision (`decide.check_call`, at once), or on a route with delegated credentials the
    decision and its credential (`decide.check_request`, a coroutine: it may exchange a token)."""
    backend, original_path = backend_of(path)
    service.checks[backend] += 1
    try:
        client, payloads, peer = verified_identity(headers)
    except UnreadableIdentity as exc:
        log.error("ext_authz (HTTP): %s; refusing", exc)
        return failed_decision(body)
    client.update({":method": method, ":path": original_path})
    if service.credentials.delegation(backend) is None:
        return check_call(service.decider, route=backend, headers=client, body=body, jwt_payloads=payloads,
                          peer_uri_san=peer)  # fmt: skip
    return check_request(service.decider, route=backend, headers=client, body=body, jwt_payloads=payloads,
                         peer_uri_san=peer)  # fmt: skip


#: The answer to a virtual server's or discovery request without its gateway's policy-service secret.
_UNPROVEN = Reply(403, json.dumps({"error": "the request does not carry its gateway's policy-service secret"}).encode(),
                  {"content-type": "application/json", "connection": "close"})  # fmt: skip


class _Request:
    __slots__ = ("url", "headers", "repeated", "count", "headers_done", "body", "size", "path", "gateway",
                 "presented", "admitted")  # fmt: skip

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.repeated: dict[str, list[str]] | None = None  # every value of a header sent more than once
        self.count = 0
        self.headers_done = False
        self.body: list[bytes] = []
        self.size = 0
        # Read when the headers are complete:
        self.path = ""
        self.gateway: str | None = None  # the gateway it is about, whose secret it must carry
        self.presented: str | None = None  # the secret it carries
        self.admitted = False


class OpenConnections:
    """The HTTP port's open connections: closed together when the service stops, and each aborted
    once it misses its deadline (`ExtAuthzHttpProtocol.deadline`; checked every second, so a request
    pays for a timestamp, not a timer)."""

    def __init__(self) -> None:
        self._open: set[ExtAuthzHttpProtocol] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def add(self, connection: ExtAuthzHttpProtocol) -> None:
        self._open.add(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())

    def discard(self, connection: ExtAuthzHttpProtocol) -> None:
        self._open.discard(connection)

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._open):
            connection.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY_S)
            now = time.monotonic()
            for connection in [c for c in self._open if c.deadline is not None and c.deadline < now]:
                log.warning("ext_authz (HTTP): closing a connection from %s: it sent no request or not the "
                            "whole of one in time", connection.peer())  # fmt: skip
                connection.close(abort=True)  # a peer that does not read would keep a plain close pending


class ExtAuthzHttpProtocol(asyncio.Protocol):
    """One connection from Envoy. Requests are answered in order, each as soon as it is complete.

    The connection is in `connections` while it is open, so that stopping the service can close
    it (closing the server only stops accepting) and a request that does not complete in time
    ends it. A request without its gateway's secret is answered, then the connection is closed.
    """

    def __init__(self, service: PolicyService, connections: OpenConnections) -> None:
        self._service = service
        self._connections = connections
        #: When (monotonic) what is being received must be complete; None: no deadline (between
        #: requests, or the body of a request that carries its gateway's secret). Set once connected.
        self.deadline: float | None = None
        self._closing = False  # nothing more is read: later requests on the connection are not answered
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request = _Request()
        self._pending: asyncio.Future[None] | None = None  # the answer still being decided, if any
        self._streaming: asyncio.Task[None] | None = None  # the task writing a streamed reply, while it does

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.deadline = time.monotonic() + FIRST_REQUEST_DEADLINE_S
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._connections.discard(self)
        if self._streaming is not None:  # nobody reads it: a virtual server's stream stops following its members
            self._streaming.cancel()

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (`abort`: at once, dropping what is not written yet); what it still
        sends is not read."""
        self._closing = True
        self.deadline = None
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()

    # A peer that does not read its answers is not read from either: its unsent answers stay bounded.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        except httptools.HttpParserError as exc:
            log.warning("ext_authz (HTTP): unparseable request from %s: %s", self.peer(), exc)
            self._fail(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = _Request()
        self.deadline = time.monotonic() + REQUEST_DEADLINE_S

    def on_url(self, url: bytes) -> None:
        self._request.url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        self._grow(len(name) + len(value) + 4)  # as sent: ": " and CRLF count too
        if request.headers_done:  # a trailer: Envoy sends none, and nothing in one is read
            return
        request.count += 1
        if request.count > MAX_HEADERS:
            raise httptools.HttpParserError("too many headers")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = request.headers
        if key in headers:  # joined once complete (joining here would cost the square of their number)
            if request.repeated is None:
                request.repeated = {}
            request.repeated.setdefault(key, [headers[key]]).append(text)
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        request = self._request
        request.headers_done = True
        if request.repeated:
            # Repeated headers are joined, as Envoy joins them for the gRPC CheckRequest.
            request.headers.update((key, ",".join(values)) for key, values in request.repeated.items())
        request.path = httptools.parse_url(request.url).path.decode("latin-1")
        request.gateway = self._gateway_of(request.path)
        request.presented = request.headers.pop(POLICY_SERVICE_SECRET_HEADER, None)
        request.admitted = self._service.index.admits(request.gateway, request.presented)
        if request.admitted:
            self.deadline = None  # Envoy's: its body comes at its client's pace, within the gateway's limits

    def on_body(self, body: bytes) -> None:
        self._grow(len(body))
        self._request.body.append(body)

    def on_message_complete(self) -> None:
        self.deadline = None
        if self._closing:
            return
        request = self._request
        method = self._parser.get_method().decode("latin-1")
        path, gateway, presented = request.path, request.gateway, request.presented
        raw = b"".join(request.body)
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:  # not what Envoy's parsers pass on: read nothing into it
            body = ""
        keep_alive = self._parser.should_keep_alive()
        decided: CheckOutcome | Awaitable[CheckOutcome]
        if not request.admitted:
            # Not Envoy's (or an Envoy a control plane with another secret configured): nothing is served,
            # and the connection ends once answered (a peer that is not Envoy gets nothing more from it).
            log.warning("refusing a request for %.200s without its gateway's policy-service secret", path)
            if not path.startswith(CHECK_PREFIX):  # no decision to answer in order: the connection ends
                self._fail(http_response(_UNPROVEN))
                return
            self._closing = True
            decided, keep_alive = unproven_caller(body), False
        elif raw and not body:
            decided = unreadable_body()
        elif path.startswith(VMCP_PREFIX):
            # A virtual server's request (authz/vmcp/front.py): answered when its members have, in order.
            self._pending = asyncio.ensure_future(self._vmcp_later(self._pending, method, path, request.headers, raw,
                                                                   keep_alive, (gateway, presented)))  # fmt: skip
            return
        elif method == "GET" and path.startswith(DISCOVER_PREFIX) and self._pending is None:
            self._discover(path[len(DISCOVER_PREFIX) :], request.headers, keep_alive)
            return
        else:
            try:
                decided = decide(self._service, method, path, request.headers, body)
            except Exception:  # a bug must refuse the call, not let it through
                log.exception("ext_authz (HTTP): decision failed; refusing")
                decided = failed_decision(body)
        if isinstance(decided, CheckOutcome) and self._pending is None:
            self._send(decided, body, keep_alive)
            return
        # A credential to fetch (or an answer still pending on this connection): answer in order.
        self._pending = asyncio.ensure_future(self._send_later(self._pending, decided, body, keep_alive))

    async def _send_later(self, before: asyncio.Future[None] | None,
                          decided: CheckOutcome | Awaitable[CheckOutcome], body: str,
                          keep_alive: bool) -> None:  # fmt: skip
        if before is not None:
            # In order; the answer before this one failing is its own business, not this one's.
            with contextlib.suppress(Exception):
                await before
        try:
            outcome = decided if isinstance(decided, CheckOutcome) else await decided
        except Exception:  # a bug must refuse the call, not let it through
            log.exception("ext_authz (HTTP): decision failed; refusing")
            outcome = failed_decision(body)
        try:
            self._send(outcome, body, keep_alive)
        except Exception:  # a bug: this answer cannot be written, so no later one may take its place
            log.exception("ext_authz (HTTP): answering failed; closing the connection")
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(_FAILED)
            self.close()  # answers queued behind this one see the connection closing and write nothing
        finally:
            if self._pending is asyncio.current_task():
                self._pending = None

    def _send(self, outcome: CheckOutcome, body: str, keep_alive: bool) -> None:
        try:
            response = answer(outcome)
        except Exception:
            log.exception("ext_authz (HTTP): answer failed; refusing")
            outcome = failed_decision(body)
            response = answer(outcome)
        if self._transport is not None and not self._transport.is_closing():
            if not keep_alive:  # said, so that Envoy does not send another check on it while it closes
                response = response.replace(b"\r\n", b"\r\nconnection: close\r\n", 1)
            self._transport.write(response)
            if not keep_alive:
                self._transport.close()
        try:  # after the answer is on its way: Envoy need not wait for the log line
            self._service.log_decision(outcome.log)
        except Exception:
            log.exception("ext_authz (HTTP): the decision could not be logged")

    async def _vmcp_later(self, before: asyncio.Future[None] | None, method: str, path: str,
                          headers: Mapping[str, str], body: bytes, keep_alive: bool,
                          shown: tuple[str | None, str | None]) -> None:  # fmt: skip
        if before is not None:
            with contextlib.suppress(Exception):
                await before
        try:
            # Checked again: the policies (and the gateway's secret) may have changed while it waited its turn.
            admitted = self._service.index.admits(*shown)
            if not admitted:
                keep_alive = False  # as for any request without the secret: answered, then the connection ends
                self._closing = True
            reply = await virtual_reply(self._service, method, path, headers, body) if admitted else _UNPROVEN
        except Exception:  # a bug: an error, never a half answer
            log.exception("virtual MCP server: request failed")
            reply = Reply(500, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Gateway error"}}',
                          {"content-type": "application/json"})  # fmt: skip
        try:
            if reply.stream is not None:
                # Only a stream is cancelled when its connection goes: a decision in flight still finishes
                # (its quota bookkeeping, its log line).
                self._streaming = asyncio.current_task()
                try:
                    await self._stream(reply, keep_alive)
                finally:
                    self._streaming = None
            elif self._transport is not None and not self._transport.is_closing():
                self._transport.write(http_response(reply))
                if not keep_alive:
                    self._transport.close()
        finally:
            if self._pending is asyncio.current_task():
                self._pending = None

    async def _stream(self, reply: Reply, keep_alive: bool) -> None:
        """A streamed reply (chunked), until it ends or the connection does (Envoy's client went away)."""
        assert reply.stream is not None
        stream = reply.stream
        transport = self._transport
        try:
            if transport is None or transport.is_closing():
                return
            transport.write(http_head(reply, chunked=True))
            async for chunk in stream:
                if transport.is_closing():
                    return
                if transport.get_write_buffer_size() > _MAX_STREAM_BUFFER:
                    log.warning("virtual MCP server: a client reads its stream too slowly; closing it")
                    transport.close()
                    return
                if chunk:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            transport.write(b"0\r\n\r\n")
            if not keep_alive:
                transport.close()
        except Exception:  # headers are out: the only honest end is closing the connection
            log.exception("virtual MCP server: a stream failed; closing it")
            if transport is not None:
                transport.close()
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator: its members' streams end

    def _discover(self, gateway: str, headers: Mapping[str, str], keep_alive: bool) -> None:
        """A discovery request (authz/discovery.py), answered at once."""
        try:
            client, payloads, peer = verified_identity(headers)
            status, listed = discovery.listing(self._service.index, gateway, client, payloads, peer)
        except UnreadableIdentity as exc:
            status, listed = 403, {"error": str(exc)}
        except Exception:  # a bug must not show anything
            log.exception("discovery failed")
            status, listed = 500, {"error": "discovery failed"}
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(discovery.response(status, listed))
            if not keep_alive:
                self._transport.close()

    # -- helpers -------------------------------------------------------------

    def _gateway_of(self, path: str) -> str | None:
        """The gateway a request to this port is about (its secret must come with it), from its path."""
        if path.startswith(CHECK_PREFIX):
            return self._service.index.gateway_of(backend_of(path)[0])
        for prefix in (VMCP_PREFIX, DISCOVER_PREFIX):
            if path.startswith(prefix):
                return path[len(prefix) :].partition("/")[0]
        return None

    def _grow(self, n: int) -> None:
        self._request.size += n
        if self._request.size > MAX_REQUEST_BYTES:
            raise httptools.HttpParserError("request too large")

    def _fail(self, response: bytes) -> None:
        """Answer `response` after what is already being decided on this connection, then close it."""
        self._closing = True

        def write_and_close(_: object = None) -> None:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(response)
            self.close()

        pending = self._pending
        if pending is None or pending.done():
            write_and_close()
        else:
            pending.add_done_callback(write_and_close)

    def peer(self) -> str:
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        return str(peer)
