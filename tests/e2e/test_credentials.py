"""End to end: user-behind-agent delegation, upstream TLS and API keys, through the real Envoy.

One gateway serves:
- `github`: a plain backend, for agents proven by an API key;
- `tx`: delegated with RFC 8693 token exchange at a real (test) token endpoint;
- `tx-down`: the same backend server, but its token endpoint does not answer;
- `secrets`: delegated with a per-user secrets file, in a header of its own;
- `https` / `https-wrong-ca`: one HTTPS backend, verified with the right and a wrong CA.

Every test asserts what the client sees and what the backend received (its
request log): a delegated backend gets the user's backend credential and
never the agent's API key, the agent header or the user's JWT.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from tests.credentials_kit import AUDIENCE, ISSUER, Pki, TokenEndpoint, UserTokens
from tests.e2e.gateway import (
    GATEWAY,
    IDENTITY_HEADER,
    RunningGateway,
    authz_http_port_of,
    backend_yaml,
    policy_service_yaml,
    wait_listening,
)
from tests.e2e.harness import (
    REPO_ROOT,
    ManagedProcess,
    McpBackend,
    mcp_client,
    python_env,
    raw_post,
)
from xds_server.authz import credentials
from xds_server.controlplane.service import ControlPlane
from xds_server.core import errors
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.envoy import EnvoyProcess
from xds_server.runtime.ports import free_port

MODES = ["modern", "legacy"]
API_KEY_HEADER = "x-api-key"
CLIENT_ID = "agentxds-gateway"
PROVIDER = "corp"


# ---------------------------------------------------------------- policies


def policies(*, listen: int, policy_port: int, users: UserTokens, token_url: str, dead_token_url: str,
             backends: dict[str, McpBackend], secrets_file: Path, certs: Path) -> dict[str, str]:  # fmt: skip
    """The policy files (name → YAML) of the test gateway. Secrets and certificates live
    outside the policy directory (it holds policy documents only)."""
    gateway = f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: 127.0.0.1, port: {listen}}}
  identity:
    trustedHeader: {IDENTITY_HEADER}
    apiKeyHeader: {API_KEY_HEADER}
    jwtProviders:
      - name: {PROVIDER}
        issuer: {ISSUER}
        audiences: [{AUDIENCE}]
        jwks: {{inline: '{users.jwks}'}}
  limits: {{maxRequestBodyBytes: 8192, connectionBufferBytes: 65536}}
  policyService: {policy_service_yaml(policy_port)}
"""

    backend = backend_yaml

    def exchange(url: str) -> str:
        return f"""\
  auth: {{provider: {PROVIDER}}}
  policyService: {{timeout: 2s}}
  credentials:
    tokenExchange:
      tokenEndpoint: {url}
      clientId: {CLIENT_ID}
      clientSecret: {{env: TOKEN_CLIENT_SECRET}}
      audience: github-api
      scope: repo:read
"""

    backends_yaml = "---\n".join([
        backend("github", backends["github"]),
        backend("tx", backends["tx"], exchange(token_url)),
        backend("tx-down", backends["tx"], exchange(dead_token_url)),
        backend("secrets", backends["secrets"], f"""\
  auth: {{provider: {PROVIDER}}}
  policyService: {{timeout: 2s}}
  credentials:
    perUserSecrets: {{file: {secrets_file}, header: x-github-token, format: "token {{secret}}"}}
"""),
        backend("https", backends["https"], f"  tls: {{caFile: {certs / 'backend-ca.pem'}}}\n"),
        backend("https-wrong-ca", backends["https"], f"  tls: {{caFile: {certs / 'wrong-ca.pem'}}}\n"),
    ])  # fmt: skip
    agents = """\
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: triage}
spec: {identity: {apiKey: {key: {env: TRIAGE_KEY}}}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: helper}
spec: {identity: {header: helper}}
"""
    rules = """\
    - agents: [triage, helper]
      tools: [whoami, list_issues]
"""
    conditional = """\
    - agents: [helper, triage]
      tools: [create_issue]
      when: 'args.repo.startsWith("acme/")'
"""
    policy_docs = "---\n".join(
        f"apiVersion: agentxds.dev/v1\nkind: MCPPolicy\nmetadata: {{name: {name}}}\nspec:\n  backend: {name}\n"
        f"  rules:\n{rules}{conditional if name == 'tx' else ''}"
        for name in ("github", "tx", "tx-down", "secrets", "https", "https-wrong-ca")
    )
    return {"gateway.yaml": gateway, "backends.yaml": backends_yaml, "agents.yaml": agents,
            "policies.yaml": policy_docs}  # fmt: skip


# ---------------------------------------------------------------- processes


_READY_RE = r"^READY (https?://\S+)$"


def start_https_backend(workdir: Path, name: str, cert: Path, key: Path) -> McpBackend:
    """The demo MCP server over HTTPS (`--tls-cert/--tls-key`)."""
    log = workdir / f"{name}.requests.jsonl"
    argv = [sys.executable, "-m", "xds_server.demo.mcp_server", "--host", "127.0.0.1", "--port", "0",
            "--name", name, "--request-log", str(log), "--tls-cert", str(cert), "--tls-key", str(key)]  # fmt: skip
    proc = ManagedProcess(argv, log_path=workdir / f"{name}.log", env=python_env(), cwd=REPO_ROOT, name=name)
    try:
        line = proc.start(ready_line=_READY_RE, timeout=20)
    except BaseException:
        proc.stop()
        raise
    assert line is not None and line.startswith("READY https://"), line
    url = httpx.URL(re.match(_READY_RE, line).group(1))  # type: ignore[union-attr]
    assert url.port is not None
    return McpBackend(proc, str(url), url.host, url.port, "/mcp", name, log)


@pytest.fixture(scope="module")
def secret_env() -> Iterator[dict[str, str]]:
    """The agent's API key and the gateway's client secret, in this (control plane) process's environment."""
    values = {"TRIAGE_KEY": "tk-" + secrets.token_hex(16), "TOKEN_CLIENT_SECRET": "cs-" + secrets.token_hex(16)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in values.items():
            mp.setenv(name, value)
        yield values


class World:
    def __init__(self, gateway: RunningGateway, users: UserTokens, endpoint: TokenEndpoint, keys: dict[str, str],
                 dead_token_url: str, secrets_file: Path) -> None:  # fmt: skip
        self.gateway, self.users, self.endpoint, self.keys = gateway, users, endpoint, keys
        self.dead_token_url, self.secrets_file = dead_token_url, secrets_file

    def backend(self, name: str) -> McpBackend:
        return self.gateway.backends[name]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(secret_env: dict[str, str], mcp_backend_factory_module: Any,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:  # fmt: skip
    workdir = tmp_path_factory.mktemp("credentials")
    policy_dir = workdir / "policies"
    policy_dir.mkdir()
    secrets_file = workdir / "user-secrets.yaml"
    secrets_file.write_text("alice: alice-pat-123\n")
    pki = Pki(workdir / "certs")
    backend_ca, _ = pki.ca("backend")
    pki.ca("wrong")
    cert, key = pki.server(backend_ca, "https-backend", dns=("localhost",), ips=("127.0.0.1",))

    users = UserTokens()
    endpoint = await TokenEndpoint(users, client_id=CLIENT_ID, client_secret=secret_env["TOKEN_CLIENT_SECRET"]).start()
    dead_token_url = f"http://127.0.0.1:{free_port()}/oauth2/token"
    https = start_https_backend(workdir, "https-backend", cert, key)
    servers = {
        "github": mcp_backend_factory_module(name="github"),
        "tx": mcp_backend_factory_module(name="tx"),
        "secrets": mcp_backend_factory_module(name="secrets", json_response=True),
        "https": https,
    }
    listen, policy_port = free_port(), free_port()
    for name, text in policies(listen=listen, policy_port=policy_port, users=users, token_url=endpoint.url,
                               dead_token_url=dead_token_url, backends=servers, secrets_file=secrets_file,
                               certs=pki.directory).items():  # fmt: skip
        (policy_dir / name).write_text(text)
    control = ControlPlane(policy_dir, port=0, debounce_ms=50, policy_port=policy_port, approvals_port=0,
                           authz_http_port=authz_http_port_of(policy_dir))  # fmt: skip
    await control.start()
    envoy: EnvoyProcess | None = None
    try:
        assert control.last_reload is not None and control.last_reload.ok, control.last_reload
        bootstrap = render_bootstrap(node_id="e2e-credentials", node_cluster=GATEWAY, xds_host="127.0.0.1",
                                     xds_port=control.port, admin_port=0)  # fmt: skip
        envoy = EnvoyProcess(bootstrap, workdir=workdir / "envoy", log_level="warning").start()
        await envoy.wait_live_async(20)
        await wait_listening(listen)
        gateway = RunningGateway(policy_dir, control, envoy, listen, servers)
        yield World(gateway, users, endpoint, secret_env, dead_token_url, secrets_file)
    finally:
        if envoy is not None:
            envoy.stop()
            print(f"--- envoy log tail ---\n{envoy.log_text()[-3000:]}")
        await control.stop()
        await endpoint.stop()
        https.stop()
        print(f"--- https backend output tail ---\n{https.process.output()[-2000:]}")


# ---------------------------------------------------------------- helpers


def user_headers(world: World, sub: str | None, *, agent: str = "triage", **extra: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if agent == "triage":
        headers[API_KEY_HEADER] = world.keys["TRIAGE_KEY"]
    else:
        headers[IDENTITY_HEADER] = agent
    if sub is not None:
        headers["authorization"] = f"Bearer {world.users.mint(sub)}"
    return headers | extra


async def call(client: Any, tool: str, **arguments: Any) -> Any:
    """The tool's text, or the MCPError the gateway answered with."""
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as exc:
        return exc
    assert not result.is_error, result
    return result.content[0].text


def first_mcp_error(exc: BaseException) -> MCPError | None:
    """The MCPError in `exc`, looking inside exception groups."""
    if isinstance(exc, MCPError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        if (found := first_mcp_error(inner)) is not None:
            return found
    return None


def tool_call_body(tool: str, request_id: Any = 1, **arguments: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments}})  # fmt: skip


def assert_no_caller_credentials(requests: list[dict[str, Any]], *secrets_: str) -> None:
    """No request the backend received carries any of `secrets_` (in any header or the body) or an agent header."""
    assert requests, "the backend received nothing"
    for request in requests:
        assert API_KEY_HEADER not in request["headers"], request["headers"]
        assert IDENTITY_HEADER not in request["headers"], request["headers"]
        text = json.dumps(request)
        for secret in secrets_:
            assert secret not in text, f"the backend saw a caller credential in {request['method']} {request['path']}"


# ---------------------------------------------------------------- API keys


@pytest.mark.parametrize("mode", MODES)
async def test_api_key_agent_gets_its_tools_and_the_key_stays_at_the_gateway(world: World, mode: str) -> None:
    github = world.backend("github")
    github.clear_requests()
    async with mcp_client(world.gateway.url("github"), {API_KEY_HEADER: world.keys["TRIAGE_KEY"]}, mode) as client:
        assert await call(client, "whoami") == "server github"
        assert await call(client, "list_issues", repo="acme/web") == "issues of acme/web: #1 bug, #2 feature"
        denied = await call(client, "delete_repo", repo="acme/web")
    assert isinstance(denied, MCPError) and denied.code == errors.TOOL_DENIED.code, denied
    assert denied.data["reason"] == "tool_not_allowed"
    assert_no_caller_credentials(github.requests(), world.keys["TRIAGE_KEY"])


async def test_wrong_api_key_is_an_unknown_agent(world: World) -> None:
    github = world.backend("github")
    github.clear_requests()
    for headers in ({API_KEY_HEADER: "tk-not-the-key"}, {API_KEY_HEADER: world.keys["TRIAGE_KEY"] + "x"}, {}):
        response = await raw_post(world.gateway.url("github"), tool_call_body("whoami", "k1"), headers)
        assert response.status_code == 200, response.text
        error = response.json()["error"]
        assert error["code"] == errors.UNKNOWN_AGENT.code and error["data"]["reason"] == "unknown_agent"
        assert response.json()["id"] == "k1"
    assert github.requests() == []


def test_render_does_not_print_the_api_key(world: World) -> None:
    result = subprocess.run([sys.executable, "-m", "xds_server.cli", "render", str(world.gateway.policy_dir), "--to", "xds"],
                            capture_output=True, text=True, timeout=60, env=python_env(), cwd=REPO_ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "x-api-key" in result.stdout  # the matcher is there...
    assert world.keys["TRIAGE_KEY"] not in result.stdout  # ...but not the key
    assert world.keys["TOKEN_CLIENT_SECRET"] not in result.stdout


def test_render_never_prints_the_client_secret(world: World) -> None:
    result = subprocess.run([sys.executable, "-m", "xds_server.cli", "render", str(world.gateway.policy_dir), "--to", "xds"],
                            capture_output=True, text=True, timeout=60, env=python_env(), cwd=REPO_ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert world.keys["TOKEN_CLIENT_SECRET"] not in result.stdout


# ---------------------------------------------------------------- token exchange


@pytest.mark.parametrize("mode", MODES)
async def test_token_exchange_gives_the_backend_the_users_token_only(world: World, mode: str) -> None:
    tx = world.backend("tx")
    tx.clear_requests()
    headers = user_headers(world, "alice")
    user_jwt = headers["authorization"].removeprefix("Bearer ")
    exchanges_before = len(world.endpoint.exchanges)
    async with mcp_client(world.gateway.url("tx"), headers, mode) as client:
        assert await call(client, "whoami") == "server tx"
        assert await call(client, "list_issues", repo="acme/web") == "issues of acme/web: #1 bug, #2 feature"
        await client.list_tools()

    requests = tx.requests()
    assert requests
    for request in requests:
        assert request["headers"].get("authorization") == "Bearer backend-token-for-alice", request["headers"]
    assert_no_caller_credentials(requests, user_jwt, world.keys["TRIAGE_KEY"])

    # One exchange for all of those requests (cached), made as RFC 8693 says.
    made = world.endpoint.exchanges[exchanges_before:]
    assert [e.status for e in made] == [200]
    form = made[0].form
    assert made[0].client_id == CLIENT_ID
    assert form == {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": user_jwt,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "audience": "github-api", "scope": "repo:read"}  # fmt: skip


async def test_each_user_gets_their_own_token(world: World) -> None:
    tx = world.backend("tx")
    for sub in ("bob", "carol"):
        tx.clear_requests()
        async with mcp_client(world.gateway.url("tx"), user_headers(world, sub)) as client:
            assert await call(client, "whoami") == "server tx"
        assert {r["headers"]["authorization"] for r in tx.requests()} == {f"Bearer backend-token-for-{sub}"}


@pytest.mark.parametrize("agent", ["helper", "triage"])
async def test_a_conditional_rule_is_decided_before_the_credential_is_added(world: World, agent: str) -> None:
    tx = world.backend("tx")
    tx.clear_requests()
    headers = user_headers(world, "alice", agent=agent)
    async with mcp_client(world.gateway.url("tx"), headers) as client:
        allowed = await call(client, "create_issue", repo="acme/web", title="bug")
        refused = await call(client, "create_issue", repo="evil/web", title="bug")
    assert allowed == "created issue in acme/web: bug"
    assert isinstance(refused, MCPError) and refused.data["reason"] == "condition_not_met"
    calls = [r for r in tx.requests() if '"create_issue"' in r["body"]]
    assert len(calls) == 1 and calls[0]["headers"]["authorization"] == "Bearer backend-token-for-alice"
    assert_no_caller_credentials(
        tx.requests(), headers["authorization"].removeprefix("Bearer "), world.keys["TRIAGE_KEY"]
    )


async def test_no_user_token_is_refused_before_the_backend(world: World) -> None:
    """Refused by jwt_authn (the backend's `auth` requires the token) or, failing that, by the policy service."""
    tx = world.backend("tx")
    tx.clear_requests()
    response = await raw_post(world.gateway.url("tx"), tool_call_body("whoami", "u1"), user_headers(world, None))
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert response.json()["id"] == "u1"
    assert error["code"] == credentials.USER_TOKEN_REQUIRED.code
    assert error["data"]["reason"] in ("missing_credentials", "user_token_required")
    assert tx.requests() == []


async def test_an_invalid_user_token_never_reaches_the_policy_service_or_backend(world: World) -> None:
    tx = world.backend("tx")
    tx.clear_requests()
    forged = UserTokens().mint("alice")  # right claims, wrong key
    headers = user_headers(world, None) | {"authorization": f"Bearer {forged}"}
    before = len(world.endpoint.exchanges)
    response = await raw_post(world.gateway.url("tx"), tool_call_body("whoami"), headers)
    assert response.status_code == 401, response.text
    assert tx.requests() == [] and len(world.endpoint.exchanges) == before


async def test_token_endpoint_down_refuses_and_the_backend_is_not_called(world: World) -> None:
    tx = world.backend("tx")  # tx-down's server
    tx.clear_requests()
    response = await raw_post(world.gateway.url("tx-down"), tool_call_body("whoami", 9), user_headers(world, "alice"))
    assert response.status_code == 502, response.text
    body = response.json()
    error = body["error"]
    assert body["id"] == 9
    assert error["code"] == credentials.CREDENTIAL_UNAVAILABLE.code
    assert error["data"]["reason"] == "credential_unavailable"
    assert world.dead_token_url in error["message"] and "cannot reach it" in error["message"]
    assert world.keys["TOKEN_CLIENT_SECRET"] not in response.text
    assert tx.requests() == []

    # With the SDK: the first request (server/discover or initialize) is refused the same way.
    with pytest.raises(BaseException) as refused:  # the SDK may wrap it in an exception group
        async with mcp_client(world.gateway.url("tx-down"), user_headers(world, "alice"), "legacy", timeout=10):
            pass
    error = first_mcp_error(refused.value)
    assert error is not None and error.code == credentials.CREDENTIAL_UNAVAILABLE.code, refused.value
    assert tx.requests() == []


async def test_token_endpoint_refusal_is_reported_without_secrets(world: World) -> None:
    tx = world.backend("tx")
    tx.clear_requests()
    world.endpoint.client_secret = "rotated-at-the-idp"  # the gateway's secret is now wrong
    try:
        response = await raw_post(world.gateway.url("tx"), tool_call_body("whoami", 3), user_headers(world, "dave"))
    finally:
        world.endpoint.client_secret = world.keys["TOKEN_CLIENT_SECRET"]
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert "HTTP 401 (invalid_client)" in error["message"] and world.endpoint.url in error["message"]
    assert world.keys["TOKEN_CLIENT_SECRET"] not in response.text
    assert tx.requests() == []


# ---------------------------------------------------------------- per-user secrets


@pytest.mark.parametrize("mode", MODES)
async def test_per_user_secret_in_its_own_header(world: World, mode: str) -> None:
    store = world.backend("secrets")
    store.clear_requests()
    headers = user_headers(world, "alice", agent="helper")
    async with mcp_client(world.gateway.url("secrets"), headers, mode) as client:
        assert await call(client, "whoami") == "server secrets"
    requests = store.requests()
    assert {r["headers"].get("x-github-token") for r in requests} == {"token alice-pat-123"}
    assert all("authorization" not in r["headers"] for r in requests)  # the user's JWT is removed
    assert_no_caller_credentials(requests, headers["authorization"].removeprefix("Bearer "))


async def test_a_user_without_a_secret_is_refused_until_one_is_added(world: World) -> None:
    store = world.backend("secrets")
    store.clear_requests()
    response = await raw_post(world.gateway.url("secrets"), tool_call_body("whoami", "b1"), user_headers(world, "bob"))
    assert response.status_code == 200, response.text
    error = response.json()["error"]
    assert error["code"] == credentials.NO_USER_CREDENTIAL.code and error["data"]["reason"] == "no_user_credential"
    assert "bob" in error["message"]
    assert store.requests() == []

    secrets_file = world.secrets_file
    original = secrets_file.read_text()
    secrets_file.write_text(original + "bob: bob-pat-456\n")  # read again on the next request: no reload needed
    try:
        async with mcp_client(world.gateway.url("secrets"), user_headers(world, "bob")) as client:
            assert await call(client, "whoami") == "server secrets"
        assert {r["headers"]["x-github-token"] for r in store.requests()} == {"token bob-pat-456"}
    finally:
        secrets_file.write_text(original)
        os.utime(secrets_file, ns=(1, 1))  # a different mtime even within the filesystem's clock resolution


# ---------------------------------------------------------------- upstream TLS


@pytest.mark.parametrize("mode", MODES)
async def test_https_backend_verified_with_its_ca(world: World, mode: str) -> None:
    https = world.backend("https")
    https.clear_requests()
    async with mcp_client(world.gateway.url("https"), {IDENTITY_HEADER: "helper"}, mode) as client:
        assert await call(client, "whoami") == "server https-backend"
    assert https.requests()  # it came over TLS: the server speaks nothing else


async def test_https_backend_with_the_wrong_ca_is_unavailable(world: World) -> None:
    https = world.backend("https")
    https.clear_requests()
    response = await raw_post(world.gateway.url("https-wrong-ca"), tool_call_body("whoami", "w1"),
                              {IDENTITY_HEADER: "helper"})  # fmt: skip
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert response.json()["id"] == "w1"
    assert error["code"] == errors.BACKEND_UNAVAILABLE.code and error["data"]["reason"] == "backend_unavailable"
    assert error["data"]["backend"] == "https-wrong-ca"
    await asyncio.sleep(0.1)
    assert https.requests() == []  # the handshake failed: no HTTP request was ever sent


async def test_lists_are_still_filtered_per_caller_on_a_delegated_backend(world: World) -> None:
    async with mcp_client(world.gateway.url("tx"), user_headers(world, "alice")) as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
    assert tools == ["create_issue", "list_issues", "whoami"]
