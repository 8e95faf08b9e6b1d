"""ext_authz over HTTP/1.1: the policy service's plain-HTTP front, spoken to over a real socket.

What Envoy sends (`POST /check/<backend><path>`, identity headers, the body)
and what it needs back (200 allows; anything else is the client's reply).
Envoy itself drives this adapter in tests/e2e/test_policy_service.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from xds_server.authz import ext_authz_http
from xds_server.authz.decide import CheckOutcome
from xds_server.authz.decision_log import DecisionLog
from xds_server.authz.ext_authz_http import UnreadableIdentity, answer, backend_of, verified_identity
from xds_server.authz.service import PolicyService
from xds_server.controlplane.pipeline import compile_policies
from xds_server.core import errors
from xds_server.core.wire import POLICY_SERVICE_SECRET_HEADER

POLICIES = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec:
  listen: {address: 127.0.0.1, port: 10100}
  identity: {trustedHeader: x-agent-id}
  policyService: {extAuthz: http}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: github}
spec:
  endpoints: [{host: 127.0.0.1, port: 18100}]
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: executor}
spec: {identity: {header: executor}}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [executor]
      tools: [create_issue]
      when: 'args.repo.startsWith("acme/")'
    - agents: [executor]
      tools: [list_issues]
      quota: {calls: 1, per: 1m}
"""


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, policies: str) -> AsyncIterator[PolicyService]:
    """A policy service on ephemeral ports with `policies` published."""
    (tmp_path / "policies.yaml").write_text(policies)
    ir, _ = compile_policies(tmp_path)
    svc = PolicyService(port=0, authz_http_port=0, approvals_port=0)
    await svc.start()
    svc.update(ir)
    try:
        yield svc
    finally:
        await svc.stop()


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[PolicyService]:
    async with serving(tmp_path, POLICIES) as svc:
        yield svc


def tool_call(tool: str, request_id: Any = 1, **arguments: Any) -> bytes:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    return json.dumps(body).encode()


def check(body: bytes, *, backend: str = "github", agent: str = "executor", method: str = "POST") -> bytes:
    """The request Envoy's ext_authz filter sends for a call to /mcp/<backend>."""
    head = (f"{method} /check/{backend}/mcp/{backend} HTTP/1.1\r\nhost: gw\r\ncontent-length: {len(body)}\r\n"
            f"x-agent-id: {agent}\r\nx-envoy-internal: true\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def exchange(service: PolicyService, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send the requests one after another on one connection; return the answers."""
    assert service.authz_http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    try:
        answers = []
        for request in requests:
            writer.write(request)
            answers.append(await read_response(reader))
        return answers
    finally:
        writer.close()


def test_backend_of_splits_the_check_path() -> None:
    assert backend_of("/check/github/mcp/github") == ("github", "/mcp/github")
    assert backend_of("/check/github") == ("github", "")
    assert backend_of("/mcp/github") == ("", "/mcp/github")


async def test_an_allowed_call_gets_an_empty_200(service: PolicyService) -> None:
    [(status, headers, body)] = await exchange(service, check(tool_call("create_issue", repo="acme/web")))
    assert (status, headers["content-length"], body) == (200, "0", b"")


async def test_a_refusal_is_the_json_rpc_error_the_client_gets(service: PolicyService) -> None:
    [(status, headers, body)] = await exchange(service, check(tool_call("create_issue", "req-7", repo="evil/web")))
    assert status == errors.CONDITION_NOT_MET.http_status == 403
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["id"] == "req-7"
    assert answer["error"]["code"] == errors.CONDITION_NOT_MET.code
    assert answer["error"]["data"] == {"reason": "condition_not_met", "tool": "create_issue", "backend": "github",
                                       "rule": "github/rules[0]"}  # fmt: skip


async def test_one_connection_serves_many_checks_and_quotas_say_when_to_retry(service: PolicyService) -> None:
    answers = await exchange(service, check(tool_call("list_issues")), check(tool_call("list_issues")),
                             check(tool_call("create_issue", repo="acme/web")))  # fmt: skip
    assert [status for status, _, _ in answers] == [200, 429, 200]
    _, headers, body = answers[1]
    retry = json.loads(body)["error"]["data"]["retryAfterSeconds"]
    assert headers["retry-after"] == str(retry) and 1 <= retry <= 60


@pytest.mark.parametrize(("backend", "agent", "kind"), [
    ("-", "executor", errors.METHOD_DENIED),       # a route without its own path_prefix
    ("gitlab", "executor", errors.METHOD_DENIED),  # not a backend of the current policies
    ("github", "nobody", errors.UNKNOWN_AGENT),
])  # fmt: skip
async def test_what_it_cannot_place_is_refused(
    service: PolicyService, backend: str, agent: str, kind: errors.ErrorKind
) -> None:
    [(status, _, body)] = await exchange(
        service, check(tool_call("create_issue", repo="acme/web"), backend=backend, agent=agent)
    )
    assert status == kind.http_status
    assert json.loads(body)["error"]["data"]["reason"] == kind.reason


@pytest.mark.parametrize("request_bytes", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"POST /check/github/mcp HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello!!",
])  # fmt: skip
async def test_an_unparseable_request_gets_400_and_the_connection_closes(
    service: PolicyService, request_bytes: bytes
) -> None:
    assert service.authz_http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    writer.write(request_bytes)
    status, headers, _ = await read_response(reader)
    assert status == 400 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the service
    writer.close()


async def test_stopping_closes_envoys_kept_alive_connections(service: PolicyService) -> None:
    assert service.authz_http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    writer.write(check(tool_call("create_issue", repo="acme/web")))
    assert (await read_response(reader))[0] == 200
    await service.stop()
    # No decision from a stopped service: Envoy must reconnect (and fail closed if it cannot).
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


# ---------------------------------------------------------------- the decision log


async def test_decisions_are_logged_in_batches_with_their_own_time(caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(logging.getLogger("agentxds.decisions.test"), interval_s=0.05)
    with caplog.at_level(logging.INFO, logger="agentxds.decisions.test"):
        decided = time.time()
        log.record({"tool": "a", "allowed": True})
        log.record({"tool": "b", "allowed": False})
        ours = lambda: [r for r in caplog.records if r.name == "agentxds.decisions.test"]  # noqa: E731 (not another test's tasks)
        assert ours() == []  # nothing written on the request path
        await asyncio.sleep(0.2)
    assert [json.loads(r.getMessage())["tool"] for r in ours()] == ["a", "b"]
    assert all(abs(r.created - decided) < 0.05 for r in ours())


def test_without_an_event_loop_a_decision_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(logging.getLogger("agentxds.decisions.test"))
    with caplog.at_level(logging.INFO, logger="agentxds.decisions.test"):
        log.record({"tool": "a"})
    assert [r.getMessage() for r in caplog.records] == ['{"tool": "a"}']


async def test_stopping_the_service_writes_what_is_queued(
    service: PolicyService, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="agentxds.decisions"):
        await exchange(service, check(tool_call("create_issue", repo="acme/web")))
        await service.stop()
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "agentxds.decisions"]
    assert logged == [{"agent": "executor", "allowed": True, "backend": "github", "reason": "allowed",
                       "rule": "github/rules[0]", "tool": "create_issue"}]  # fmt: skip


# ---------------------------------------------------------------- what Envoy verified


def test_verified_identity_is_read_from_envoys_headers_only() -> None:
    payload = json.dumps({"sub": "élise", "azp": "executor"}, ensure_ascii=False).encode().decode("latin-1")
    client, payloads, peer = verified_identity({
        "x-agent-id": "executor", "x-agentxds-verified-jwt-corp": payload,
        "x-agentxds-verified-peer": "spiffe://example.org/agent/a",
    })  # fmt: skip
    assert client == {"x-agent-id": "executor"}
    assert payloads == {"corp": {"sub": "élise", "azp": "executor"}}
    assert peer == "spiffe://example.org/agent/a"


@pytest.mark.parametrize("sans", ["spiffe://example.org/agent/a,spiffe://example.org/agent/b",
                                  "spiffe://example.org/agent/a,x"])  # fmt: skip
def test_a_certificate_with_several_uri_sans_is_refused(sans: str) -> None:
    """Envoy joins the SANs with ',' (a SAN may hold one too): only a single SAN reads back exactly."""
    with pytest.raises(UnreadableIdentity, match="must have exactly one"):
        verified_identity({"x-agentxds-verified-peer": sans})


@pytest.mark.parametrize("value", ["not json", "[1, 2]", '{"sub": "a"},{"sub": "b"}'])
def test_an_unreadable_verified_payload_is_refused(value: str) -> None:
    with pytest.raises(UnreadableIdentity):
        verified_identity({"x-agentxds-verified-jwt-corp": value})


def test_a_credential_is_set_upstream_and_the_callers_removed() -> None:
    response = answer(CheckOutcome(True, set_headers={"authorization": "Bearer t"}, remove_headers=("x-api-key",)))
    assert response == (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nauthorization: Bearer t\r\n"
                        b"x-envoy-auth-headers-to-remove: x-api-key\r\n\r\n")  # fmt: skip


def test_a_refusal_with_a_5xx_status_goes_as_403_with_its_status_in_a_header() -> None:
    response = answer(CheckOutcome(False, 502, '{"error": {}}'))
    head = response.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 403 ") and "x-agentxds-reply-status: 502" in head


def test_a_refusal_with_status_200_goes_as_403() -> None:
    # Envoy takes a 200 for "allowed": a refusal the protocol answers as a result never goes out so.
    response = answer(CheckOutcome(False, 200, '{"error": {}}'))
    assert response.startswith(b"HTTP/1.1 403 ")


# ---------------------------------------------------------------- a peer that is not Envoy


async def test_repeated_headers_are_joined_as_envoy_joins_them(service: PolicyService) -> None:
    twice = check(tool_call("create_issue", repo="acme/web")).replace(
        b"x-agent-id: executor\r\n", b"x-agent-id: executor\r\nx-agent-id: executor\r\n"
    )
    [(status, _, body)] = await exchange(service, twice)
    assert status == 403 and json.loads(body)["error"]["data"]["reason"] == errors.UNKNOWN_AGENT.reason


async def test_more_headers_than_any_gateway_allows_get_400_and_the_connection_closes(
    service: PolicyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ext_authz_http, "MAX_HEADERS", 50)
    many = check(tool_call("create_issue", repo="acme/web")).replace(
        b"\r\n\r\n", b"\r\n" + b"a: b\r\n" * 50 + b"\r\n", 1
    )
    assert service.authz_http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    writer.write(many)
    status, headers, _ = await read_response(reader)
    assert status == 400 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_request_not_complete_in_time_ends_its_connection(
    service: PolicyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ext_authz_http, "REQUEST_DEADLINE_S", 0.3)
    monkeypatch.setattr(ext_authz_http, "FIRST_REQUEST_DEADLINE_S", 0.6)
    monkeypatch.setattr(ext_authz_http, "_SWEEP_EVERY_S", 0.1)
    assert service.authz_http_port is not None
    request = check(tool_call("create_issue", repo="acme/web"))
    head, body = request.split(b"\r\n\r\n", 1)
    silent = await asyncio.open_connection("127.0.0.1", service.authz_http_port)  # sends nothing
    trickled = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    trickled[1].write(request[:40])  # half its headers
    kept = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    kept[1].write(request)
    assert (await read_response(kept[0]))[0] == 200
    slow_body = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    slow_body[1].write(head + b"\r\n\r\n" + body[:10])  # headers whole: the body may come at its pace
    await asyncio.sleep(2.0)  # the first sweep comes within a second, then every 0.1 s
    assert await asyncio.wait_for(silent[0].read(), 5) == b""
    assert await asyncio.wait_for(trickled[0].read(), 5) == b""
    # Envoy's kept-alive connection between requests is not a request in progress: it is served on.
    kept[1].write(request)
    assert (await read_response(kept[0]))[0] == 200
    slow_body[1].write(body[10:])  # a gateway without a secret: its requests are Envoy's by definition
    assert (await read_response(slow_body[0]))[0] == 200
    for _, writer in (silent, trickled, kept, slow_body):
        writer.close()


async def test_a_trailer_is_not_read(service: PolicyService) -> None:
    body = tool_call("create_issue", repo="acme/web")
    request = (b"POST /check/github/mcp/github HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\nx-agent-id: executor\r\n\r\n" % (len(body), body))  # fmt: skip
    [(status, _, answer_body)] = await exchange(service, request)
    assert status == 403 and json.loads(answer_body)["error"]["data"]["reason"] == errors.UNKNOWN_AGENT.reason


async def test_a_body_that_is_not_utf8_is_refused_unread(service: PolicyService) -> None:
    body = b'{"jsonrpc":"2.0","id":"u","method":"tools/call","params":{"name":"create_issue","arguments":{"repo":"acme/\xff"}}}'
    [(status, _, answer_body)] = await exchange(service, check(body))
    refusal = json.loads(answer_body)
    assert status == errors.PARSE_ERROR.http_status and refusal["error"]["code"] == errors.PARSE_ERROR.code
    assert refusal["id"] is None  # nothing is read from it


async def test_json_nested_past_the_interpreters_depth_is_refused_not_crashed_on(service: PolicyService) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = (
        b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"create_issue","arguments":{"repo":%s}}}'
        % deep
    )
    answers = await exchange(service, check(body), check(tool_call("create_issue", repo="acme/web")))
    (status, _, answer_body), (after, _, _) = answers
    assert status == errors.INVALID_REQUEST.http_status
    assert json.loads(answer_body)["error"]["code"] == errors.INVALID_REQUEST.code
    assert after == 200  # the connection still answers in order


SECRET = "s" * 40


@pytest_asyncio.fixture
async def secret_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PolicyService]:
    """The service, for a gateway with a policyService.secret."""
    monkeypatch.setenv("TEST_POLICY_SERVICE_SECRET", SECRET)
    text = POLICIES.replace("policyService: {extAuthz: http}",
                            "policyService: {extAuthz: http, secret: {env: TEST_POLICY_SERVICE_SECRET}}")  # fmt: skip
    async with serving(tmp_path, text) as svc:
        yield svc


def with_secret(request: bytes) -> bytes:
    return request.replace(b"\r\n", f"\r\n{POLICY_SERVICE_SECRET_HEADER}: {SECRET}\r\n".encode(), 1)


async def test_a_request_without_the_secret_is_answered_with_connection_close_then_closed(
    secret_service: PolicyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert secret_service.authz_http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", secret_service.authz_http_port)
    request = check(tool_call("create_issue", repo="acme/web"))
    writer.write(request + with_secret(request))  # the second is never read
    status, headers, body = await read_response(reader)
    assert status == 403 and headers["connection"] == "close"  # Envoy sends nothing more on it
    assert json.loads(body)["error"]["code"] == errors.POLICY_SERVICE_UNAVAILABLE.code
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # With the secret, on a connection of its own: allowed; and its body may come at its pace.
    monkeypatch.setattr(ext_authz_http, "REQUEST_DEADLINE_S", 0.3)
    monkeypatch.setattr(ext_authz_http, "_SWEEP_EVERY_S", 0.1)
    head, rest = with_secret(request).split(b"\r\n\r\n", 1)
    unproven_head, unproven_rest = request.split(b"\r\n\r\n", 1)
    proven = await asyncio.open_connection("127.0.0.1", secret_service.authz_http_port)
    unproven = await asyncio.open_connection("127.0.0.1", secret_service.authz_http_port)
    proven[1].write(head + b"\r\n\r\n" + rest[:10])
    unproven[1].write(unproven_head + b"\r\n\r\n" + unproven_rest[:10])
    await asyncio.sleep(2.0)
    assert await asyncio.wait_for(unproven[0].read(), 5) == b""  # without the secret: within the deadline
    proven[1].write(rest[10:])
    assert (await read_response(proven[0]))[0] == 200
    for _, w in (proven, unproven):
        w.close()


async def test_an_answer_that_cannot_be_written_is_not_replaced_by_the_next_one(
    service: PolicyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decide, real_answer = ext_authz_http.decide, ext_authz_http.answer

    async def later(outcome: CheckOutcome) -> CheckOutcome:
        await asyncio.sleep(0.05)
        return outcome

    def decide(service: PolicyService, method: str, path: str, headers: Any, body: str) -> Any:
        outcome = real_decide(service, method, path, headers, body)
        return later(outcome) if "evil/" in body else outcome  # the first: a decision that takes a while

    def answer(outcome: CheckOutcome) -> bytes:
        if not outcome.allowed:  # neither the refusal nor the fallback refusal can be written
            raise RuntimeError("a bug writing this answer")
        return real_answer(outcome)

    monkeypatch.setattr(ext_authz_http, "decide", decide)
    monkeypatch.setattr(ext_authz_http, "answer", answer)
    assert service.authz_http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    writer.write(check(tool_call("create_issue", repo="evil/web")) + check(tool_call("create_issue", repo="acme/web")))
    everything = await asyncio.wait_for(reader.read(), 5)  # until closed
    writer.close()
    assert everything.startswith(b"HTTP/1.1 403 ") and everything.count(b"HTTP/1.1 ") == 1, everything
