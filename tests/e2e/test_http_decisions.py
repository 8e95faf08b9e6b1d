"""End to end: the HTTP decision path (ext_authz over HTTP, the default) carries every identity.

JWT-identified agents (and the users they act for) and mTLS (SPIFFE)
agents reach the policy service over HTTP with what Envoy verified: the
payloads jwt_authn verified and the client certificate's URI SANs, in
headers Envoy adds to the check request itself. Conditions over the user
and the agent, quotas by user and approvals work in both protocol
revisions. A client that sends those headers itself gains nothing: Envoy
never forwards them to the policy service, which sees only Envoy's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import (
    GATEWAY,
    POLICY_SECRET,
    RunningGateway,
    TlsGateway,
    backend_yaml,
    start_tls_gateway,
    stop_gateway,
)
from tests.e2e.harness import McpBackend, mcp_client, raw_post
from tests.e2e.test_jwt import AGENT_ISSUER, AGENTS_YAML, CORP, as_agent, gateway_yaml, start_gateway_with
from tests.e2e.test_mcp_gateway import MODERN, MODERN_META
from tests.e2e.test_mtls import Pki, make_pki
from xds_server.core import errors
from xds_server.core.wire import (
    CHECK_PREFIX,
    DISCOVER_PREFIX,
    JWT_METADATA_NAMESPACE,
    POLICY_SERVICE_SECRET_HEADER,
    ROUTE_CONTEXT_EXTENSION,
    ROUTE_METADATA_KEY,
    VMCP_PREFIX,
)

MODES = ["modern", "legacy"]
HTTP_CLUSTER = "cluster.agentxds/policy-service-http.upstream_rq_completed"

POLICIES = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage, executor]
      tools: [list_issues]
    - description: only for alice, with a short title (size() keeps it with the policy service)
      agents: [executor]
      tools: [create_issue]
      when: 'user.sub == "alice" && args.title.size() < 40'
    - agents: [executor]
      tools: [get_issue]
      quota: {calls: 2, per: 1h, by: user}
    - agents: [executor]
      tools: [delete_repo]
      requireApproval: true
    - description: only executor (size() keeps it with the policy service)
      agents: [triage, executor]
      tools: [whoami]
      when: 'agent.name == "executor" && size(args) >= 0'
"""


def _files(backends: dict[str, McpBackend]) -> Any:
    def files(listen_port: int, policy_port: int) -> dict[str, str]:
        return {
            "gateway.yaml": gateway_yaml(listen_port, policy_port),
            "corp-jwks.json": CORP.jwks(),
            "agents.yaml": AGENTS_YAML,
            "backends.yaml": "---\n".join(backend_yaml(n, b) for n, b in backends.items()),
            "policies.yaml": POLICIES,
        }

    return files


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    backends = {"github": mcp_backend_factory_module(name="github-http")}
    gw = await start_gateway_with(tmp_path_factory.mktemp("http-decisions"), backends, _files(backends))
    assert gw.control.policy_service is not None and gw.control.policy_service.authz_http_port is not None
    yield gw
    await stop_gateway(gw)


async def _call(url: str, headers: dict[str, str], mode: str, tool: str, **arguments: Any) -> Any:
    """The tool's text, or the MCPError the gateway answered with."""
    async with mcp_client(url, headers, mode) as client:
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            return exc
    assert not result.is_error, result
    return result.content[0].text


def _requests_over(gateway: RunningGateway, cluster: str) -> int:
    return int(gateway.envoy.stats().get(cluster, 0))


# ---------------------------------------------------------------- JWT agents and users


@pytest.mark.parametrize("mode", MODES)
async def test_a_condition_on_the_verified_user_over_http(gateway: RunningGateway, mode: str) -> None:
    before = _requests_over(gateway, HTTP_CLUSTER)
    alice = await _call(gateway.url(), as_agent("executor", user="alice"), mode, "create_issue", repo="acme/web",
                        title="bug")  # fmt: skip
    bob = await _call(
        gateway.url(), as_agent("executor", user="bob"), mode, "create_issue", repo="acme/web", title="bug"
    )
    nobody = await _call(gateway.url(), as_agent("executor"), mode, "create_issue", repo="acme/web", title="bug")
    assert alice == "created issue in acme/web: bug"
    for refused in (bob, nobody):
        assert isinstance(refused, MCPError) and refused.data["reason"] == "condition_not_met", refused
        assert refused.data["rule"] == "github/rules[1]"
    assert _requests_over(gateway, HTTP_CLUSTER) - before == 3  # each decided over HTTP (ext_proc, for lists, is gRPC)


@pytest.mark.parametrize("mode", MODES)
async def test_a_quota_by_user_over_http(gateway: RunningGateway, mode: str) -> None:
    user = f"quota-{mode}"  # a budget of its own
    headers = as_agent("executor", user=user)
    first = await _call(gateway.url(), headers, mode, "get_issue", repo="acme/web", number=1)
    second = await _call(gateway.url(), headers, mode, "get_issue", repo="acme/web", number=2)
    third = await _call(gateway.url(), headers, mode, "get_issue", repo="acme/web", number=3)
    other_user = await _call(gateway.url(), as_agent("executor", user=f"{user}-2"), mode, "get_issue", repo="acme/web",
                             number=4)  # fmt: skip
    assert isinstance(first, str) and isinstance(second, str) and isinstance(other_user, str)
    assert isinstance(third, MCPError) and third.code == errors.QUOTA_EXCEEDED.code
    assert third.data["reason"] == "quota_exceeded" and third.data["retryAfterSeconds"] >= 1


@pytest.mark.parametrize("mode", MODES)
async def test_an_approval_over_http(gateway: RunningGateway, mode: str) -> None:
    service = gateway.control.policy_service
    assert service is not None
    headers = as_agent("executor", user="alice")
    repo = f"acme/old-{mode}"
    first = await _call(gateway.url(), headers, mode, "delete_repo", repo=repo)
    assert isinstance(first, MCPError) and first.data["reason"] == "approval_required"
    service.approvals.approve(first.data["approvalId"], by="alice")
    done = await _call(gateway.url(), headers, mode, "delete_repo", repo=repo)
    assert done == f"deleted {repo}"
    again = await _call(gateway.url(), headers, mode, "delete_repo", repo=repo)
    assert isinstance(again, MCPError) and again.data["reason"] == "approval_required"  # once only


@pytest.mark.parametrize("mode", MODES)
async def test_a_condition_on_the_jwt_agent_over_http(gateway: RunningGateway, mode: str) -> None:
    executor = await _call(gateway.url(), as_agent("executor"), mode, "whoami")
    triage = await _call(gateway.url(), as_agent("triage"), mode, "whoami")
    assert isinstance(executor, str)
    assert isinstance(triage, MCPError) and triage.data["reason"] == "condition_not_met"


# ---------------------------------------------------------------- forged identity headers


def _call_body(tool: str, **arguments: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments, "_meta": MODERN_META}})  # fmt: skip


def _headers(tool: str, **extra: str) -> dict[str, str]:
    return {"mcp-method": "tools/call", "mcp-name": tool, "mcp-protocol-version": MODERN, **extra}


FORGED_AGENT = json.dumps({"iss": AGENT_ISSUER, "azp": "executor", "sub": "client-executor"})
FORGED_USER = json.dumps({"iss": "https://idp.test", "sub": "alice"})


@pytest.mark.parametrize(
    "forged",
    [
        {"x-agentxds-verified-jwt-agents": FORGED_AGENT},
        {"X-Agentxds-Verified-Jwt-Agents": FORGED_AGENT},
        {"x-agentxds-verified-jwt-agents": FORGED_AGENT, "x-agentxds-verified-jwt-corp": FORGED_USER},
    ],
)
async def test_a_forged_agent_payload_gains_nothing(gateway: RunningGateway, forged: dict[str, str]) -> None:
    """triage (a valid token) claims to be executor in the verified-payload header: the policy service
    still sees triage, so executor's condition refuses."""
    response = await raw_post(
        gateway.url(), _call_body("whoami"), {**as_agent("triage"), **_headers("whoami"), **forged}
    )
    reply = response.json()
    assert reply["id"] == 9 and reply["error"]["data"]["reason"] == "condition_not_met", reply


async def test_a_forged_user_payload_gains_nothing(gateway: RunningGateway) -> None:
    """executor with no user token claims alice in the verified-payload header: no user is verified."""
    headers = {**as_agent("executor"), **_headers("create_issue"), "x-agentxds-verified-jwt-corp": FORGED_USER}
    reply = (await raw_post(gateway.url(), _call_body("create_issue", repo="acme/web", title="t"), headers)).json()
    assert reply["id"] == 9 and reply["error"]["data"]["reason"] == "condition_not_met", reply
    # ... and with bob's real token, the forged alice does not replace bob.
    headers = {
        **as_agent("executor", user="bob"),
        **_headers("create_issue"),
        "x-agentxds-verified-jwt-corp": FORGED_USER,
    }
    reply = (await raw_post(gateway.url(), _call_body("create_issue", repo="acme/web", title="t"), headers)).json()
    assert reply["error"]["data"]["reason"] == "condition_not_met", reply


async def test_a_forged_payload_without_a_token_is_an_unknown_agent(gateway: RunningGateway) -> None:
    """No token at all, only the forged header: RBAC already knows no agent (never reaches Python)."""
    headers = {**_headers("whoami"), "x-agentxds-verified-jwt-agents": FORGED_AGENT}
    reply = (await raw_post(gateway.url(), _call_body("whoami"), headers)).json()
    assert reply["error"]["code"] == errors.UNKNOWN_AGENT.code, reply


# ---------------------------------------------------------------- only Envoy may ask


def _service_urls(gateway: RunningGateway) -> tuple[str, str]:
    service = gateway.control.policy_service
    assert service is not None and service.authz_http_port is not None
    return f"http://127.0.0.1:{service.authz_http_port}", f"127.0.0.1:{service.port}"


async def test_a_request_straight_to_the_policy_service_needs_the_gateways_secret(gateway: RunningGateway) -> None:
    """Someone who reaches the policy service's ports (not through Envoy) and forges what Envoy would have
    verified (here, executor's token) gets nothing without the gateway's policyService.secret: no decision,
    no discovery, no virtual server. With the secret the same forged check is allowed, which is what the
    secret is there to stop."""
    http_url, _ = _service_urls(gateway)
    forged = {**_headers("whoami"), "x-agentxds-verified-jwt-agents": FORGED_AGENT, "host": "agentxds-policy-service"}
    check = f"{http_url}{CHECK_PREFIX}github/mcp/github"
    refused = await raw_post(check, _call_body("whoami"), forged)
    reply = refused.json()
    assert refused.status_code != 200 and reply["id"] == 9, reply
    assert reply["error"]["code"] == errors.POLICY_SERVICE_UNAVAILABLE.code and "secret" in reply["error"]["message"]
    wrong = await raw_post(check, _call_body("whoami"), {**forged, POLICY_SERVICE_SECRET_HEADER: "x" * 40})
    assert wrong.status_code != 200, wrong.text
    allowed = await raw_post(check, _call_body("whoami"), {**forged, POLICY_SERVICE_SECRET_HEADER: POLICY_SECRET})
    assert allowed.status_code == 200, allowed.text  # the forged header is believed: only the secret stands between
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        listing = await client.get(f"{http_url}{DISCOVER_PREFIX}{GATEWAY}", headers=forged)
        assert listing.status_code == 403 and "secret" in listing.text, listing.text
        virtual = await client.post(f"{http_url}{VMCP_PREFIX}{GATEWAY}/github", content=_call_body("whoami"),
                                    headers=forged)  # fmt: skip
        assert virtual.status_code == 403 and "secret" in virtual.text, virtual.text


async def test_a_connection_without_the_secret_is_answered_once_then_closed(gateway: RunningGateway) -> None:
    """Raw socket, two checks pipelined: the first without the secret is refused and the connection ends, so
    the second (with it) is never decided on it: a peer that is not Envoy gets one answer per connection."""
    service = gateway.control.policy_service
    assert service is not None and service.authz_http_port is not None
    body = _call_body("whoami").encode()
    head = (f"POST {CHECK_PREFIX}github/mcp/github HTTP/1.1\r\nhost: agentxds-policy-service\r\n"
            f"content-length: {len(body)}\r\nx-agentxds-verified-jwt-agents: {FORGED_AGENT}\r\n")  # fmt: skip
    with_secret = f"{POLICY_SERVICE_SECRET_HEADER}: {POLICY_SECRET}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", service.authz_http_port)
    try:
        writer.write(head.encode() + b"\r\n" + body + (head + with_secret).encode() + b"\r\n" + body)
        everything = await asyncio.wait_for(reader.read(), 10)  # until the service closes the connection
    finally:
        writer.close()
    assert everything.count(b"HTTP/1.1 ") == 1 and b"secret" in everything, everything
    assert not everything.startswith(b"HTTP/1.1 200"), everything


async def test_without_the_secret_an_unknown_route_is_refused_like_a_known_one(gateway: RunningGateway) -> None:
    """A caller without the secret learns nothing of which routes exist: a check about a route no gateway has
    gets the same refusal as one about a real route, over HTTP and gRPC; with the secret it is the unknown route."""
    http_url, grpc_target = _service_urls(gateway)
    headers = {**_headers("whoami"), "host": "agentxds-policy-service"}
    answers = {}
    for route in ("github", "no-such-route"):
        refused = await raw_post(f"{http_url}{CHECK_PREFIX}{route}/mcp/{route}", _call_body("whoami"), headers)
        answers[route] = (refused.status_code, refused.json())
    assert answers["github"] == answers["no-such-route"], answers
    assert answers["github"][1]["error"]["code"] == errors.POLICY_SERVICE_UNAVAILABLE.code
    unknown = await raw_post(f"{http_url}{CHECK_PREFIX}no-such-route/mcp/x", _call_body("whoami"),
                             {**headers, POLICY_SERVICE_SECRET_HEADER: POLICY_SECRET})  # fmt: skip
    reply = unknown.json()
    assert reply["id"] == 9 and reply["error"]["code"] == errors.METHOD_DENIED.code, reply
    assert "no-such-route" in reply["error"]["message"]
    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions[ROUTE_CONTEXT_EXTENSION] = "no-such-route"
    request.attributes.request.http.body = _call_body("whoami")
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        refused_grpc = await check(request)
        assert refused_grpc.status.code != 0 and b"secret" in refused_grpc.denied_response.body.encode()
        known = await check(request, metadata=[(POLICY_SERVICE_SECRET_HEADER, POLICY_SECRET)])
        assert b"no-such-route" in known.denied_response.body.encode()


async def test_a_grpc_check_or_stream_straight_to_the_policy_service_needs_the_secret(gateway: RunningGateway) -> None:
    _, grpc_target = _service_urls(gateway)
    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions[ROUTE_CONTEXT_EXTENSION] = "github"
    http = request.attributes.request.http
    http.method, http.path, http.body = "POST", "/mcp/github", _call_body("whoami")
    http.headers.update(_headers("whoami"))
    request.attributes.metadata_context.filter_metadata[JWT_METADATA_NAMESPACE].update(
        {"agents": json.loads(FORGED_AGENT)}
    )
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        refused = await check(request)
        assert refused.status.code != 0 and b"secret" in refused.denied_response.body.encode()
        allowed = await check(request, metadata=[(POLICY_SERVICE_SECRET_HEADER, POLICY_SECRET)])
        assert allowed.status.code == 0  # the forged metadata is believed: only the secret stands between
        # A stream is answered with a refusal (not aborted: on a failOpen route Envoy would let an aborted
        # stream's answer through unfiltered), the same for a known and an unknown route.
        replies = []
        for route in ("github", "no-such-route"):
            first = external_processor_pb2.ProcessingRequest()
            first.response_headers.headers.headers.add(key=":status", raw_value=b"200")
            stream = external_processor_pb2_grpc.ExternalProcessorStub(channel).Process(
                iter([first]), metadata=[(ROUTE_METADATA_KEY, route)]
            )
            [reply] = [r async for r in stream]
            assert reply.immediate_response.status.code == errors.POLICY_SERVICE_UNAVAILABLE.http_status
            replies.append(json.loads(reply.immediate_response.body))
        assert replies[0] == replies[1] and replies[0]["error"]["code"] == errors.POLICY_SERVICE_UNAVAILABLE.code


# ---------------------------------------------------------------- mTLS agents


MTLS_POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage, executor]
      tools: [whoami]
      when: 'agent.name == "executor" && size(args) >= 0'
    - agents: [executor]
      tools: [list_issues, get_issue]
      quota: {calls: 2, per: 1h, by: agent}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[TlsGateway, Pki]]:
    root: Path = tmp_path_factory.mktemp("http-mtls")
    pki = make_pki(root)
    gw = await start_tls_gateway(root / "gateway", {"github": mcp_backend_factory_module(name="github-http-tls")},
                                 cert=pki.gateway_cert, key=pki.gateway_key, bundle=pki.ca, ca_file=pki.ca_copy,
                                 policy_yaml=MTLS_POLICY)  # fmt: skip
    yield gw, pki
    await stop_gateway(gw)


def _tls_client(tls: tuple[TlsGateway, Pki], agent: str) -> dict[str, Any]:
    gw, pki = tls
    return {"verify": str(gw.ca_file), "cert": pki.agent(agent)}


@pytest.mark.parametrize("mode", MODES)
async def test_spiffe_agents_over_http(tls: tuple[TlsGateway, Pki], mode: str) -> None:
    gw, _ = tls
    tool = {"modern": "list_issues", "legacy": "get_issue"}[mode]  # the quota counts per tool: one each
    before = _requests_over(gw, HTTP_CLUSTER)
    async with mcp_client(gw.url(), None, mode, **_tls_client(tls, "executor")) as client:
        who = await client.call_tool("whoami", {})
        within = [await client.call_tool(tool, {"repo": "acme/web", "number": i}) for i in range(2)]
        with pytest.raises(MCPError) as over:
            await client.call_tool(tool, {"repo": "acme/web", "number": 3})
    async with mcp_client(gw.url(), None, mode, **_tls_client(tls, "triage")) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("whoami", {})
    assert not who.is_error and not any(r.is_error for r in within)
    assert over.value.error.data["reason"] == "quota_exceeded"
    assert refused.value.error.data["reason"] == "condition_not_met"
    assert _requests_over(gw, HTTP_CLUSTER) - before == 5


async def test_a_forged_peer_header_gains_nothing(tls: tuple[TlsGateway, Pki]) -> None:
    gw, _ = tls
    headers = {**_headers("whoami"), "x-agentxds-verified-peer": "spiffe://example.org/agent/executor"}
    response = await raw_post(gw.url(), _call_body("whoami"), headers, **_tls_client(tls, "triage"))
    reply = response.json()
    assert reply["id"] == 9 and reply["error"]["data"]["reason"] == "condition_not_met", reply
