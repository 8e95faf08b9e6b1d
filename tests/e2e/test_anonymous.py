"""End to end: anonymous callers (`identity.anonymous`), through the real Envoy and control plane.

The gateway trusts a header, knows an API-key agent and a JWT provider, and
lets callers with no credential at all in as agent `public`, which may call
`whoami` natively and `list_issues` through the policy service (a `when`
condition). A caller that presents a credential which proves nothing (an
unknown header value, a wrong API key, a token that does not verify, a bearer
token on a gateway that checks none) is refused, never let in as `public`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import (
    AGENTS_YAML,
    GATEWAY,
    IDENTITY_HEADER,
    RunningGateway,
    TlsGateway,
    backend_yaml,
    launch,
    policy_service_yaml,
    spiffe_agents_yaml,
    stop_gateway,
    tls_gateway_yaml,
)
from tests.e2e.harness import McpBackend, mcp_client, raw_post
from tests.e2e.test_jwt import AUDIENCE, CORP, USER_ISSUER
from tests.e2e.test_mtls import make_pki
from xds_server.core import errors
from xds_server.runtime.ports import free_port

MODES = ["modern", "legacy"]
API_KEY = "k-runner-0123456789"

GATEWAY_YAML = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {gateway}}}
spec:
  listen: {{address: 127.0.0.1, port: {listen}}}
  policyService: {policy_service}
  identity:
    trustedHeader: {header}
    anonymous: {{agent: public}}
    jwtProviders:
      - name: corp
        issuer: {issuer}
        audiences: [{audience}]
        jwks: {{file: corp-jwks.json}}
"""

AGENTS = (
    AGENTS_YAML
    + """\
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: public}
spec: {description: whoever sends no credential}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: runner}
spec: {identity: {apiKey: {key: {file: runner.key}}}}
"""
)

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [public]
      tools: [whoami]
    - agents: [public]
      tools: [list_issues]
      when: 'args.repo.startsWith("acme/")'
    - agents: [triage, runner]
      tools: [whoami, get_issue]
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("anonymous")
    backends = {"github": mcp_backend_factory_module(name="github")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = workdir / "policies"
    policy_dir.mkdir()
    (policy_dir / "gateway.yaml").write_text(GATEWAY_YAML.format(
        gateway=GATEWAY, listen=listen_port, policy_service=policy_service_yaml(policy_port), header=IDENTITY_HEADER,
        issuer=USER_ISSUER,
        audience=AUDIENCE))  # fmt: skip
    (policy_dir / "corp-jwks.json").write_text(CORP.jwks())
    (policy_dir / "backends.yaml").write_text(backend_yaml("github", backends["github"]))
    (policy_dir / "agents.yaml").write_text(AGENTS)
    (policy_dir / "runner.key").write_text(API_KEY + "\n")
    (policy_dir / "github-policy.yaml").write_text(POLICY)
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port)
    gw = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def backend(gateway: RunningGateway) -> McpBackend:
    b = gateway.backends["github"]
    b.clear_requests()
    return b


def _called(backend: McpBackend) -> list[tuple[str, str | None]]:
    """(tool, x-agentxds-agent) of each tools/call the backend received."""
    out = []
    for request in backend.requests():
        body = json.loads(request["body"]) if request["body"] else {}
        if body.get("method") == "tools/call":
            out.append((body["params"]["name"], request["headers"].get("x-agentxds-agent")))
    return out


@pytest.mark.parametrize("mode", MODES)
async def test_a_caller_with_no_credential_gets_what_the_anonymous_agent_is_granted(
    gateway: RunningGateway, backend: McpBackend, mode: str
) -> None:
    async with mcp_client(gateway.url(), {}, mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        who = await client.call_tool("whoami", {})  # native RBAC
        listed = await client.call_tool("list_issues", {"repo": "acme/web"})  # the policy service's condition
        with pytest.raises(MCPError) as refused:
            await client.call_tool("get_issue", {"repo": "acme/web", "number": 1})
        with pytest.raises(MCPError) as condition:
            await client.call_tool("list_issues", {"repo": "evil/web"})
    assert not who.is_error and not listed.is_error
    assert refused.value.error.code == errors.TOOL_DENIED.code
    assert "not allowed for agent 'public'" in refused.value.error.message, refused.value.error
    assert condition.value.error.data["reason"] == errors.CONDITION_NOT_MET.reason, condition.value.error
    assert {"whoami", "list_issues"} <= tools  # tools/list is one of the methods any grant allows
    assert _called(backend) == [("whoami", "public"), ("list_issues", "public")]


# A credential that proves no agent: each is refused as it would be without `anonymous`.
PROVES_NOTHING = {
    "unknown-header-value": ({IDENTITY_HEADER: "mallory"}, errors.UNKNOWN_AGENT),
    "empty-header-value": ({IDENTITY_HEADER: ""}, errors.UNKNOWN_AGENT),
    "wrong-api-key": ({"x-api-key": "guess"}, errors.UNKNOWN_AGENT),
    "token-that-does-not-verify": ({"authorization": "Bearer not.a.jwt"}, errors.INVALID_CREDENTIALS),
    "valid-user-token-but-no-agent": (None, errors.UNKNOWN_AGENT),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(PROVES_NOTHING))
@pytest.mark.parametrize("tool", ["whoami", "list_issues"])  # native, policy service
async def test_a_credential_that_proves_nothing_is_refused_never_downgraded(
    gateway: RunningGateway, backend: McpBackend, case: str, mode: str, tool: str
) -> None:
    headers, kind = PROVES_NOTHING[case]
    if headers is None:
        headers = {"authorization": f"Bearer {CORP.token(sub='alice')}"}
    answer = await raw_post(gateway.url(), json.dumps(_call(mode, tool)), {**headers, **_mcp_headers(mode, tool)})
    reply = answer.json()
    assert reply["id"] == 41 and reply["error"]["code"] == kind.code, (answer.status_code, reply)
    assert reply["error"]["data"]["reason"] == kind.reason, reply
    assert _called(backend) == []


@pytest.mark.parametrize("mode", MODES)
async def test_known_agents_are_still_recognised_beside_the_anonymous_one(
    gateway: RunningGateway, backend: McpBackend, mode: str
) -> None:
    for headers in ({IDENTITY_HEADER: "triage"}, {"x-api-key": API_KEY}):
        async with mcp_client(gateway.url(), headers, mode) as client:
            assert not (await client.call_tool("get_issue", {"repo": "acme/web", "number": 1})).is_error
            with pytest.raises(MCPError):  # granted to public, not to them
                await client.call_tool("list_issues", {"repo": "acme/web"})
    assert _called(backend) == [("get_issue", "triage"), ("get_issue", "runner")]


def _call(mode: str, tool: str) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": {"repo": "acme/web"} if tool == "list_issues" else {}}
    if mode == "modern":
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    return {"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": params}


def _mcp_headers(mode: str, tool: str) -> dict[str, str]:
    if mode == "modern":
        return {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": tool}
    return {"mcp-protocol-version": "2025-11-25"}


# ---------------------------------------------------------------- with optional client certificates


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[TlsGateway, Any]]:
    """Agents known by SPIFFE ID, client certificates asked for but not required, `public` for the rest."""
    root = tmp_path_factory.mktemp("anonymous-mtls")
    pki = make_pki(root)
    backends = {"github": mcp_backend_factory_module(name="github-tls")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = root / "policies"
    policy_dir.mkdir()
    gateway = tls_gateway_yaml(listen_port, policy_port, cert=pki.gateway_cert, key=pki.gateway_key, bundle=pki.ca,
                               required=False)  # fmt: skip
    (policy_dir / "gateway.yaml").write_text(gateway + "  identity: {anonymous: {agent: public}}\n")
    (policy_dir / "backends.yaml").write_text(backend_yaml("github", backends["github"]))
    public = "---\napiVersion: agentxds.dev/v1\nkind: Agent\nmetadata: {name: public}\nspec: {}\n"
    (policy_dir / "agents.yaml").write_text(spiffe_agents_yaml() + public)
    (policy_dir / "github-policy.yaml").write_text(POLICY.replace("[triage, runner]", "[triage]"))
    control, envoy = await launch(policy_dir, root, listen_port, policy_port)
    gw = TlsGateway(policy_dir, control, envoy, listen_port, backends, ca_file=pki.ca_copy)
    yield gw, pki
    await stop_gateway(gw)


@pytest.mark.parametrize("mode", MODES)
async def test_with_optional_certificates_no_certificate_is_anonymous_and_an_unknown_one_is_refused(
    tls: tuple[TlsGateway, Any], mode: str
) -> None:
    gw, pki = tls
    backend = gw.backends["github"]
    backend.clear_requests()
    async with mcp_client(gw.url(), {}, mode, verify=str(gw.ca_file)) as client:
        assert not (await client.call_tool("whoami", {})).is_error
    async with mcp_client(gw.url(), {}, mode, verify=str(gw.ca_file), cert=pki.agent("triage")) as client:
        assert not (await client.call_tool("get_issue", {"repo": "acme/web", "number": 1})).is_error
    # "stranger" holds a valid certificate of the trust domain but is no Agent, and evil.crt is
    # our CA's certificate for another trust domain: neither is anonymous.
    for cert in (pki.agent("stranger"), (pki.dir.parent / "evil.crt", pki.dir.parent / "evil.key")):
        answer = await raw_post(gw.url(), json.dumps(_call(mode, "whoami")), _mcp_headers(mode, "whoami"),
                                verify=str(gw.ca_file), cert=cert)  # fmt: skip
        reply = answer.json()
        assert reply["id"] == 41 and reply["error"]["data"]["reason"] == errors.UNKNOWN_AGENT.reason, reply
    assert _called(backend) == [("whoami", "public"), ("get_issue", "triage")]
