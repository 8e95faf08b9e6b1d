"""End to end: JWT identities, users behind agents, and the MCP authorization spec.

Agents prove who they are with a token of the `agents` provider in
`x-agent-token` (claim `azp`); the users they act for with a token of the
`corp` provider in `Authorization: Bearer` (keys in a JWKS file of the
policy directory). Tokens are minted here with PyJWT. The `secure` backend
requires a user token (MCP authorization spec: 401 with a challenge naming
the protected-resource metadata document, which the gateway serves).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import (
    GATEWAY,
    RunningGateway,
    backend_yaml,
    eventually,
    launch,
    policy_service_yaml,
    stop_gateway,
)
from tests.e2e.harness import McpBackend, mcp_client, raw_h2, raw_http1, raw_post
from tests.e2e.test_mcp_gateway import MODERN, MODERN_META, find_mcp_error, tool_calls
from xds_server.core import errors
from xds_server.runtime.ports import free_port

MODES = ["modern", "legacy"]
USER_ISSUER, AGENT_ISSUER, AUDIENCE = "https://idp.test", "https://agents.test", "agentxds-e2e"


class Issuer:
    """An RSA signing key with its JWKS, minting tokens for one issuer."""

    def __init__(self, issuer: str, kid: str) -> None:
        self.issuer, self.kid = issuer, kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    def token(self, *, lifetime: int = 600, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "iat": now, "exp": now + lifetime, **claims}
        return pyjwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})


CORP = Issuer(USER_ISSUER, "corp-1")
AGENTS = Issuer(AGENT_ISSUER, "agents-1")


def gateway_yaml(listen_port: int, policy_port: int) -> str:
    return f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: 127.0.0.1, port: {listen_port}}}
  policyService: {policy_service_yaml(policy_port)}
  identity:
    jwtProviders:
      - name: corp
        issuer: {USER_ISSUER}
        audiences: [{AUDIENCE}]
        jwks: {{file: corp-jwks.json}}
      - name: agents
        issuer: {AGENT_ISSUER}
        audiences: [{AUDIENCE}]
        tokenHeader: x-agent-token
        jwks: {{inline: '{AGENTS.jwks()}'}}
"""


AGENTS_YAML = """\
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: triage}
spec: {identity: {jwt: {provider: agents, claim: azp, value: triage}}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: executor}
spec: {identity: {jwt: {provider: agents, claim: azp, value: executor}}}
"""

POLICIES_YAML = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [list_issues, "get_*"]
    - agents: [triage]
      tools: [create_issue]
      users: {provider: corp, groups: [maintainers]}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: secure}
spec:
  backend: secure
  rules:
    - agents: [triage]
      tools: [list_issues, whoami]
"""


def policy_files(backends: dict[str, McpBackend]) -> Callable[[int, int], dict[str, str]]:
    def files(listen_port: int, policy_port: int) -> dict[str, str]:
        auth = "  auth: {provider: corp, scopes: [mcp:tools]}\n"
        return {
            "gateway.yaml": gateway_yaml(listen_port, policy_port),
            "corp-jwks.json": CORP.jwks(),
            "agents.yaml": AGENTS_YAML,
            "backends.yaml": "---\n".join(
                backend_yaml(n, b, auth if n == "secure" else "") for n, b in backends.items()
            ),
            "policies.yaml": POLICIES_YAML,
        }

    return files


async def start_gateway_with(workdir: Path, backends: dict[str, McpBackend],
                             files: Callable[[int, int], dict[str, str]]) -> RunningGateway:  # fmt: skip
    """Like `tests.e2e.gateway.start_gateway`, with every policy file written by the test."""
    listen_port, policy_port = free_port(), free_port()
    policy_dir = workdir / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files(listen_port, policy_port).items():
        (policy_dir / name).write_text(text)
    control, envoy = await launch(policy_dir, workdir, listen_port, policy_port)
    return RunningGateway(policy_dir, control, envoy, listen_port, dict(backends))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    backends = {
        "github": mcp_backend_factory_module(name="github"),
        "secure": mcp_backend_factory_module(name="secure"),
    }
    gw = await start_gateway_with(tmp_path_factory.mktemp("jwt-gateway"), backends, policy_files(backends))
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def github(gateway: RunningGateway) -> McpBackend:
    b = gateway.backends["github"]
    b.clear_requests()
    return b


def as_agent(agent: str = "triage", *, user: str | None = None, **user_claims: Any) -> dict[str, str]:
    """Headers of `agent` acting for `user` (no user token when None)."""
    headers = {"x-agent-token": AGENTS.token(azp=agent, sub=f"client-{agent}")}
    if user is not None:
        headers["authorization"] = "Bearer " + CORP.token(sub=user, **user_claims)
    return headers


def call_body(tool: str, request_id: Any = 7, **arguments: Any) -> str:
    params: dict[str, Any] = {"name": tool, "arguments": arguments, "_meta": MODERN_META}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


def modern_headers(tool: str) -> dict[str, str]:
    return {"mcp-method": "tools/call", "mcp-name": tool, "mcp-protocol-version": MODERN}


def rpc_error(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC error of a gateway reply (never text/plain)."""
    assert response.headers["content-type"].startswith("application/json"), (response.status_code, response.text)
    body = response.json()
    assert body["jsonrpc"] == "2.0" and "result" not in body, body
    return body


async def refused(url: str, headers: dict[str, str], mode: str, tool: str, arguments: dict[str, Any]) -> MCPError:
    """The MCPError a client gets for `tool` (raised by the call, or by the connection for earlier refusals)."""
    with pytest.raises(BaseException) as caught:
        async with mcp_client(url, headers, mode) as client:
            await client.call_tool(tool, arguments)
    error = find_mcp_error(caught.value)
    assert error is not None, repr(caught.value)
    return error


# ---------------------------------------------------------------- users behind agents


@pytest.mark.parametrize("mode", MODES)
async def test_a_maintainer_acting_through_triage_may_create_issues(gateway: RunningGateway, github: McpBackend,
                                                                    mode: str) -> None:  # fmt: skip
    headers = as_agent("triage", user="alice", groups=["staff", "maintainers"])
    async with mcp_client(gateway.url(), headers, mode) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        created = await client.call_tool("create_issue", {"repo": "acme/web", "title": "bug"})
        other = await client.call_tool("list_issues", {"repo": "acme/web"})
    assert not created.is_error and not other.is_error
    assert listed == {"list_issues", "get_issue", "create_issue"}  # the list follows the user too
    assert tool_calls(github) == ["create_issue", "list_issues"]
    # The backend received the verified tokens (forwarded), so it can act for the user.
    assert any(r["headers"].get("authorization", "").startswith("Bearer ") for r in github.requests())
    # ... and who called, as the gateway verified it: the agent (from its token's claim) and the
    # user (the sub of the provider that names users, never the agent token's own sub).
    assert {(r["headers"].get("x-agentxds-agent"), r["headers"].get("x-agentxds-user")) for r in github.requests()} == {
        ("triage", "alice")
    }


@pytest.mark.parametrize("mode", MODES)
async def test_an_agent_without_a_user_reaches_the_backend_with_no_user_header(
    gateway: RunningGateway, github: McpBackend, mode: str
) -> None:
    headers = {**as_agent("triage"), "x-agentxds-user": "root"}  # forged: removed
    async with mcp_client(gateway.url(), headers, mode) as client:
        assert not (await client.call_tool("list_issues", {"repo": "acme/web"})).is_error
    seen = [r["headers"] for r in github.requests()]
    assert seen and all(h.get("x-agentxds-agent") == "triage" and "x-agentxds-user" not in h for h in seen), seen


@pytest.mark.parametrize("transport", ["h1", "h2"])
async def test_two_user_tokens_are_an_ambiguous_identity(gateway: RunningGateway, github: McpBackend,
                                                          transport: str) -> None:  # fmt: skip
    """Two Authorization headers (a maintainer's and someone else's): refused before jwt_authn picks one."""
    agent = as_agent("triage")["x-agent-token"]
    tokens = ["Bearer " + CORP.token(sub="mallory"), "Bearer " + CORP.token(sub="alice", groups=["maintainers"])]
    body = call_body("create_issue", repo="acme/web", title="t").encode()
    headers = [("content-type", "application/json"), ("accept", "application/json, text/event-stream"),
               ("x-agent-token", agent), *(("authorization", t) for t in tokens),
               *modern_headers("create_issue").items()]  # fmt: skip
    if transport == "h2":
        pseudo = [(":method", "POST"), (":scheme", "http"), (":authority", "gw"), (":path", "/mcp/github")]
        status, answer = await raw_h2(gateway.listen_port, pseudo + headers, body)
    else:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
        request = f"POST /mcp/github HTTP/1.1\r\nhost: gw\r\n{lines}content-length: {len(body)}\r\n\r\n"
        status, answer = await raw_http1(gateway.listen_port, request.encode() + body)
    reply = json.loads(answer)
    assert status == 400 and reply["id"] == 7 and reply["error"]["data"]["reason"] == "ambiguous_identity", reply
    assert github.requests() == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", [{"user": "bob", "groups": ["staff"]}, {"user": "carol"}, {}],
                         ids=["other-group", "no-groups-claim", "no-user-token"])  # fmt: skip
async def test_other_users_are_denied_the_users_rule(gateway: RunningGateway, github: McpBackend, mode: str,
                                                     user: dict[str, Any]) -> None:  # fmt: skip
    headers = as_agent("triage", **user)
    async with mcp_client(gateway.url(), headers, mode) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        allowed = await client.call_tool("list_issues", {"repo": "acme/web"})  # the agent's own grant still holds
        with pytest.raises(MCPError) as denied:
            await client.call_tool("create_issue", {"repo": "acme/web", "title": "bug"})
    assert not allowed.is_error
    assert listed == {"list_issues", "get_issue"}
    assert denied.value.code == errors.TOOL_DENIED.code == -32003
    assert denied.value.data == {"reason": "tool_not_allowed", "tool": "create_issue", "backend": "github"}
    assert "for agent 'triage'" in denied.value.message  # the agent Envoy recognised by its verified claim
    assert tool_calls(github) == ["list_issues"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("headers", [{}, {"x-agent-token": AGENTS.token(azp="mallory")},
                                     {"authorization": "Bearer " + CORP.token(sub="alice", groups=["maintainers"])}],
                         ids=["no-token", "unknown-azp", "user-token-only"])  # fmt: skip
async def test_no_known_agent_is_unknown_agent(gateway: RunningGateway, github: McpBackend, mode: str,
                                               headers: dict[str, str]) -> None:  # fmt: skip
    error = await refused(gateway.url(), headers, mode, "list_issues", {"repo": "acme/web"})
    assert error.code == errors.UNKNOWN_AGENT.code
    assert error.data == {"reason": "unknown_agent"}
    assert github.requests() == []


async def test_a_known_agent_without_a_grant_is_told_so(gateway: RunningGateway) -> None:
    error = await refused(gateway.url(), as_agent("executor"), "modern", "list_issues", {"repo": "acme/web"})
    assert error.code == errors.METHOD_DENIED.code
    assert error.data["reason"] == "method_not_allowed" and "executor" in error.message


# ---------------------------------------------------------------- invalid tokens


def _forged() -> str:
    return Issuer(USER_ISSUER, "corp-1").token(sub="alice", groups=["maintainers"])  # same kid, another key


BAD_USER_TOKENS: dict[str, Callable[[], str]] = {
    "expired": lambda: CORP.token(sub="alice", groups=["maintainers"], lifetime=-120),
    "bad-signature": _forged,
    "wrong-audience": lambda: CORP.token(sub="alice", aud="someone-else"),
    "wrong-issuer": lambda: Issuer("https://evil.test", "corp-1").token(sub="alice"),
    "not-a-jwt": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("backend", ["github", "secure"])
@pytest.mark.parametrize("bad", sorted(BAD_USER_TOKENS))
async def test_an_invalid_user_token_is_a_jsonrpc_401(gateway: RunningGateway, backend: str, bad: str) -> None:
    target = gateway.backends[backend]
    target.clear_requests()
    request_id = f"req-{uuid.uuid4().hex[:8]}"
    headers = {
        **as_agent("triage"),
        "authorization": "Bearer " + BAD_USER_TOKENS[bad](),
        **modern_headers("list_issues"),
    }
    response = await raw_post(gateway.url(backend), call_body("list_issues", request_id, repo="acme/web"), headers)
    assert response.status_code == 401, response.text
    body = rpc_error(response)
    assert body["id"] == request_id  # echoed, with its type
    assert body["error"]["code"] == errors.INVALID_CREDENTIALS.code == -32001
    assert body["error"]["data"]["reason"] == "invalid_credentials"
    assert body["error"]["data"]["detail"] and body["error"]["data"]["detail"] in body["error"]["message"]
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    if backend == "secure":
        assert f'resource_metadata="{metadata_url(gateway)}"' in challenge
    assert target.requests() == []


async def test_an_expired_agent_token_is_refused_with_the_id_echoed(
    gateway: RunningGateway, github: McpBackend
) -> None:
    headers = {"x-agent-token": AGENTS.token(azp="triage", lifetime=-120), **modern_headers("list_issues")}
    response = await raw_post(gateway.url(), call_body("list_issues", 41, repo="acme/web"), headers)
    body = rpc_error(response)
    assert response.status_code == 401 and body["id"] == 41
    assert body["error"]["data"]["reason"] == "invalid_credentials"
    assert "expired" in body["error"]["data"]["detail"]
    assert github.requests() == []


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_clients_see_the_invalid_credentials_error(gateway: RunningGateway, mode: str) -> None:
    headers = {**as_agent("triage"), "authorization": "Bearer " + BAD_USER_TOKENS["expired"]()}
    with pytest.raises(BaseException) as caught:
        async with mcp_client(gateway.url(), headers, mode) as client:
            await client.call_tool("list_issues", {"repo": "acme/web"})
    error = find_mcp_error(caught.value)
    assert error is not None, repr(caught.value)
    assert error.code == errors.INVALID_CREDENTIALS.code
    assert error.data == {"reason": "invalid_credentials", "detail": "Jwt is expired", "backend": "github"}


# ---------------------------------------------------------------- MCP authorization spec


def metadata_url(gateway: RunningGateway, backend: str = "secure") -> str:
    return f"http://127.0.0.1:{gateway.listen_port}/.well-known/oauth-protected-resource/mcp/{backend}"


async def test_auth_backend_without_a_user_token_answers_the_challenge(gateway: RunningGateway) -> None:
    secure = gateway.backends["secure"]
    secure.clear_requests()
    headers = {**as_agent("triage"), **modern_headers("whoami")}
    response = await raw_post(gateway.url("secure"), call_body("whoami", 3), headers)
    assert response.status_code == 401
    assert (
        response.headers["www-authenticate"] == f'Bearer resource_metadata="{metadata_url(gateway)}", scope="mcp:tools"'
    )
    body = rpc_error(response)
    assert body["id"] == 3
    assert body["error"]["code"] == errors.MISSING_CREDENTIALS.code
    assert body["error"]["data"] == {"reason": "missing_credentials", "backend": "secure",
                                     "resourceMetadata": metadata_url(gateway)}  # fmt: skip
    assert secure.requests() == []


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_clients_without_a_user_token_see_missing_credentials(gateway: RunningGateway, mode: str) -> None:
    with pytest.raises(BaseException) as caught:
        async with mcp_client(gateway.url("secure"), as_agent("triage"), mode) as client:
            await client.call_tool("whoami", {})
    error = find_mcp_error(caught.value)
    assert error is not None, repr(caught.value)
    assert error.code == errors.MISSING_CREDENTIALS.code and error.data["reason"] == "missing_credentials"


@pytest.mark.parametrize("path", ["/.well-known/oauth-protected-resource/mcp/secure", "/.well-known/oauth-protected-resource"],
                         ids=["path-inserted", "root"])  # fmt: skip
async def test_the_protected_resource_metadata_document(gateway: RunningGateway, path: str) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        # No token needed; a broken one is ignored there.
        response = await http.get(f"http://127.0.0.1:{gateway.listen_port}{path}",
                                  headers={"authorization": "Bearer nonsense", "mcp-protocol-version": MODERN})  # fmt: skip
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "resource": f"http://127.0.0.1:{gateway.listen_port}/mcp/secure",
        "authorization_servers": [USER_ISSUER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools"],
    }


async def test_the_sdk_discovery_code_accepts_the_challenge_and_the_document(gateway: RunningGateway) -> None:
    """The MCP SDK's own OAuth discovery steps, fed with what the gateway answers."""
    from mcp.client.auth.utils import (
        build_protected_resource_metadata_discovery_urls,
        extract_resource_metadata_from_www_auth,
        extract_scope_from_www_auth,
    )
    from mcp.shared.auth import ProtectedResourceMetadata
    from mcp.shared.auth_utils import (
        check_resource_allowed,
        resource_url_from_server_url,
    )

    server_url = gateway.url("secure")
    challenge = await raw_post(server_url, call_body("whoami", 1), {**as_agent("triage"), **modern_headers("whoami")})
    urls = build_protected_resource_metadata_discovery_urls(extract_resource_metadata_from_www_auth(challenge),
                                                            server_url)  # fmt: skip
    assert urls[0] == metadata_url(gateway) and extract_scope_from_www_auth(challenge) == "mcp:tools"
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        documents = [(await http.get(url)) for url in urls]
    for response in documents:  # the header's URL, the path-inserted one, the root one: all serve it
        metadata = ProtectedResourceMetadata.model_validate_json(response.content)
        assert check_resource_allowed(resource_url_from_server_url(server_url), str(metadata.resource))
        assert [str(a).rstrip("/") for a in metadata.authorization_servers] == [USER_ISSUER]


async def test_no_metadata_document_for_a_backend_without_auth(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        response = await http.get(metadata_url(gateway, "github"))
    assert response.status_code == 404  # (the no-backend route: a JSON-RPC error, not a document)


@pytest.mark.parametrize("mode", MODES)
async def test_auth_backend_with_a_user_token_works(gateway: RunningGateway, mode: str) -> None:
    secure = gateway.backends["secure"]
    secure.clear_requests()
    async with mcp_client(gateway.url("secure"), as_agent("triage", user="dave"), mode) as client:
        result = await client.call_tool("whoami", {})
        tools = {t.name for t in (await client.list_tools()).tools}
    assert not result.is_error and result.content[0].text == "server secure"
    assert tools == {"list_issues", "whoami"}
    assert tool_calls(secure) == ["whoami"]


# ---------------------------------------------------------------- key rotation (last: it rewrites the JWKS)


async def test_a_rotated_jwks_file_takes_effect_on_the_next_build(gateway: RunningGateway) -> None:
    rotated = Issuer(USER_ISSUER, "corp-2")
    headers = modern_headers("list_issues")
    body = call_body("list_issues", 9, repo="acme/web")

    async def status_with(issuer: Issuer) -> int:
        user = {"authorization": "Bearer " + issuer.token(sub="alice")}
        return (await raw_post(gateway.url(), body, {**as_agent("triage"), **user, **headers})).status_code

    assert await status_with(CORP) == 200 and await status_with(rotated) == 401
    gateway.write("corp-jwks.json", rotated.jwks())
    gateway.write("agents.yaml", AGENTS_YAML + "\n# touched\n")  # a rebuild, whatever the watcher follows
    await eventually(lambda: _is(status_with(rotated), 200), timeout=15, what="the new key to be accepted")
    assert await status_with(CORP) == 401  # the old key is gone
    gateway.write("corp-jwks.json", CORP.jwks())
    gateway.write("agents.yaml", AGENTS_YAML)
    await eventually(lambda: _is(status_with(CORP), 200), timeout=15, what="the original key to be back")


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected
