"""Delegated credentials in the policy service (xds_server/authz/credentials.py, check.py, ext_authz.py).

The token endpoint is an `httpx2.MockTransport` here (the e2e tests use a
real one); ext_authz checks are hand-built `CheckRequest`s with the
metadata jwt_authn would have put there.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import httpx2
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import struct_pb2

from xds_server.authz import credentials as creds
from xds_server.authz.credentials import (
    CREDENTIAL_UNAVAILABLE,
    NO_USER_CREDENTIAL,
    USER_TOKEN_REQUIRED,
    CredentialError,
    CredentialIssuer,
    Delegation,
    SecretsFiles,
    TokenExchanger,
    bearer_token,
    cache_seconds,
    delegations_from_ir,
    parse_token_response,
)
from xds_server.authz.ext_authz import ExtAuthzServicer
from xds_server.authz.service import PolicyService
from xds_server.ir.build import build_ir
from xds_server.ir.types import IR, CredentialsIR
from xds_server.policy.load import load_directory

TOKEN_URL = "https://idp.test/oauth2/token"
SECRET = "cs-do-not-leak-0123456789"
USER_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"

GATEWAY = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec:
  listen: {port: 10000}
  identity:
    trustedHeader: x-agent-id
    apiKeyHeader: x-api-key
    jwtProviders:
      - {name: corp, issuer: "https://idp.test", jwks: {inline: '{"keys": [{"kty": "oct"}]}'}}
      - {name: agents, issuer: "https://agents.test", tokenHeader: x-agent-token, jwks: {inline: '{"keys": [{"kty": "oct"}]}'}}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: helper}
spec: {identity: {header: helper}}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: tx}
spec:
  endpoints: [{host: 127.0.0.1, port: 8080}]
  auth: {provider: corp}
  policyService: {timeout: 1s}
  credentials:
    tokenExchange: {tokenEndpoint: "https://idp.test/oauth2/token", clientId: "gw client", clientSecret: {env: UNIT_TX_SECRET},
                    audience: github-api, scope: "repo read"}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: store}
spec:
  endpoints: [{host: 127.0.0.1, port: 8081}]
  auth: {provider: corp}
  credentials:
    perUserSecrets: {file: secrets.json, header: x-github-token, format: "token {secret}"}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: tx}
spec:
  backend: tx
  rules:
    - {agents: [helper], tools: [whoami]}
    - {agents: [helper], tools: [create_issue], when: 'args.repo.startsWith("acme/")'}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: store}
spec:
  backend: store
  rules: [{agents: [helper], tools: [whoami]}]
"""


@pytest.fixture
def policy_ir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IR:
    monkeypatch.setenv("UNIT_TX_SECRET", SECRET)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(GATEWAY)
    (tmp_path / "policies" / "secrets.json").write_text('{"alice": "alice-pat"}')
    return build_ir(load_directory(tmp_path / "policies"))


def token_handler(calls: list[httpx2.Request], *, status: int = 200, body: Any = None,
                  delay: float = 0.0) -> Callable[[httpx2.Request], Any]:  # fmt: skip
    async def handle(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        if delay:
            await asyncio.sleep(delay)
        form = dict(parse_qsl(request.content.decode()))
        sub = "alice" if form.get("subject_token") == USER_JWT else "other"
        answer = body if body is not None else {"access_token": f"backend-token-for-{sub}", "token_type": "Bearer",
                                                 "issued_token_type": creds.ACCESS_TOKEN_TYPE, "expires_in": 300}  # fmt: skip
        return httpx2.Response(status, json=answer)

    return handle


def exchanger(calls: list[httpx2.Request], clock: Callable[[], float] = lambda: 0.0, **handler: Any) -> TokenExchanger:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(token_handler(calls, **handler)))
    return TokenExchanger(http, clock=clock)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- settings from the IR


def test_delegations_read_the_client_secret_and_list_the_caller_headers(policy_ir: IR) -> None:
    found = delegations_from_ir(policy_ir)
    assert sorted(found) == ["store", "tx"]
    tx, store = found["tx"], found["store"]
    assert tx.client_secret == SECRET and tx.problem is None
    assert tx.provider == "corp" and tx.token_header == "authorization"
    # Every caller credential header, except the one the credential itself goes in (set, so replaced).
    assert tx.strip_headers == ("x-agent-id", "x-agent-token", "x-api-key")
    assert store.strip_headers == ("authorization", "x-agent-id", "x-agent-token", "x-api-key")
    assert store.header == "x-github-token"
    assert tx.timeout_s == pytest.approx(0.8)  # inside the backend's 1 s policy-service timeout
    assert SECRET not in repr(tx) and SECRET not in str(found)


def test_an_unreadable_client_secret_refuses_every_request(policy_ir: IR, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.delenv("UNIT_TX_SECRET")
    with caplog.at_level(logging.ERROR):
        issuer = CredentialIssuer(exchanger([]))
        issuer.update(policy_ir)
    delegation = issuer.delegation("tx")
    assert delegation is not None and delegation.problem is not None and delegation.client_secret is None
    assert "UNIT_TX_SECRET is not set" in caplog.text
    with pytest.raises(CredentialError) as refused:
        asyncio.run(issuer.issue(delegation, {"corp": {"sub": "alice"}}, {"authorization": f"Bearer {USER_JWT}"}))
    assert refused.value.kind is CREDENTIAL_UNAVAILABLE and "misconfigured" in refused.value.message


# ---------------------------------------------------------------- the user


@pytest.mark.parametrize(("value", "token"), [
    ("Bearer abc.def", "abc.def"), ("bearer   abc ", "abc"), ("abc", "abc"), ("", None), (None, None), ("Bearer ", "Bearer"),
])  # fmt: skip
def test_bearer_token(value: str | None, token: str | None) -> None:
    assert bearer_token(value) == token


def test_the_user_comes_from_verified_metadata_only(policy_ir: IR) -> None:
    delegation = delegations_from_ir(policy_ir)["tx"]
    headers = {"authorization": f"Bearer {USER_JWT}"}
    user = creds.user_of(delegation, {"corp": {"sub": "alice", "groups": ["dev"]}}, headers)
    assert (user.sub, user.token, user.claims["groups"]) == ("alice", USER_JWT, ["dev"])
    assert USER_JWT not in repr(user)
    for payloads in ({}, {"agents": {"sub": "alice"}}, {"corp": {"sub": ""}}, {"corp": {"name": "x"}}, {"corp": "x"}):
        with pytest.raises(CredentialError) as refused:
            creds.user_of(delegation, payloads, headers)  # a token in a header proves nothing by itself
        assert refused.value.kind is USER_TOKEN_REQUIRED and "provider 'corp'" in refused.value.message


# ---------------------------------------------------------------- token exchange


def test_token_response_parsing() -> None:
    ok = parse_token_response(200, b'{"access_token": "t1", "token_type": "Bearer", "expires_in": 60}', TOKEN_URL)
    assert (ok.access_token, ok.expires_in) == ("t1", 60)
    assert parse_token_response(200, b'{"access_token": "t1", "token_type": "N_A"}', TOKEN_URL).expires_in is None
    cases = {
        (400, b'{"error": "invalid_grant", "error_description": "token of alice@example.com expired"}'):
            "it answered HTTP 400 (invalid_grant)",
        (401, b'{"error": "bad error\\nwith newline"}'): "it answered HTTP 401",
        (500, b"<html>oops</html>"): "it answered HTTP 500",
        (200, b"not json"): "its answer is not a JSON object",
        (200, b'{"token_type": "Bearer"}'): "its answer has no usable access_token",
        (200, b'{"access_token": "a\\r\\nx-injected: 1"}'): "its answer has no usable access_token",
        (200, b'{"access_token": "t", "token_type": "DPoP"}'): "it issued a token of type 'DPoP', not a bearer",
    }  # fmt: skip
    for (status, body), problem in cases.items():
        with pytest.raises(CredentialError) as failed:
            parse_token_response(status, body, TOKEN_URL)
        assert failed.value.kind is CREDENTIAL_UNAVAILABLE
        assert failed.value.message.startswith(f"Token exchange at {TOKEN_URL} failed: {problem}")
        assert "alice@example.com" not in failed.value.message and "\n" not in failed.value.message


def test_cache_lifetime_keeps_a_margin() -> None:
    assert cache_seconds(300) == 270
    assert cache_seconds(10) == 9
    assert cache_seconds(None) == 0 and cache_seconds(0) == 0 and cache_seconds(-5) == 0


async def test_exchange_request_is_rfc_8693_with_basic_client_auth(policy_ir: IR) -> None:
    calls: list[httpx2.Request] = []
    delegation = delegations_from_ir(policy_ir)["tx"]
    token = await exchanger(calls).token(delegation, USER_JWT)
    assert token == "backend-token-for-alice"
    [request] = calls
    assert request.method == "POST" and str(request.url) == TOKEN_URL
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert dict(parse_qsl(request.content.decode())) == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": USER_JWT,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "github-api",
        "scope": "repo read",
    }
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    client, _, secret = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic" and (unquote_plus(client), unquote_plus(secret)) == ("gw client", SECRET)
    assert client == "gw+client"  # form-urlencoded before Basic (RFC 6749 2.3.1)


async def test_tokens_are_cached_per_user_token_until_shortly_before_expiry(policy_ir: IR) -> None:
    calls: list[httpx2.Request] = []
    clock = Clock()
    ex = exchanger(calls, clock)
    delegation = delegations_from_ir(policy_ir)["tx"]
    for _ in range(3):
        assert await ex.token(delegation, USER_JWT) == "backend-token-for-alice"
    assert len(calls) == 1
    assert await ex.token(delegation, "another.user.token") == "backend-token-for-other"
    assert len(calls) == 2
    clock.now += 269
    await ex.token(delegation, USER_JWT)
    assert len(calls) == 2
    clock.now += 2  # past expires_in - 30 s
    await ex.token(delegation, USER_JWT)
    assert len(calls) == 3


async def test_concurrent_requests_share_one_exchange(policy_ir: IR) -> None:
    calls: list[httpx2.Request] = []
    ex = exchanger(calls, delay=0.05)
    delegation = delegations_from_ir(policy_ir)["tx"]
    tokens = await asyncio.gather(*(ex.token(delegation, USER_JWT) for _ in range(8)))
    assert set(tokens) == {"backend-token-for-alice"} and len(calls) == 1


async def test_failures_are_not_cached_and_name_the_endpoint_only(policy_ir: IR) -> None:
    calls: list[httpx2.Request] = []
    ex = exchanger(calls, status=401, body={"error": "invalid_client"})
    delegation = delegations_from_ir(policy_ir)["tx"]
    for _ in range(2):
        with pytest.raises(CredentialError) as failed:
            await ex.token(delegation, USER_JWT)
        assert failed.value.message == f"Token exchange at {TOKEN_URL} failed: it answered HTTP 401 (invalid_client)"
    assert len(calls) == 2


async def test_a_slow_token_endpoint_times_out(policy_ir: IR) -> None:
    delegation = delegations_from_ir(policy_ir)["tx"]
    fast = Delegation(**{**delegation.__dict__, "timeout_s": 0.05})
    with pytest.raises(CredentialError) as failed:
        await exchanger([], delay=1.0).token(fast, USER_JWT)
    assert failed.value.message == f"Token exchange at {TOKEN_URL} failed: no answer within 0.05 s"


async def test_an_unreachable_token_endpoint(policy_ir: IR) -> None:
    delegation = delegations_from_ir(policy_ir)["tx"]
    url = "http://user:pw@127.0.0.1:9/token?x=1"  # port 9 (discard): connection refused
    broken = Delegation(**{**delegation.__dict__, "credentials": CredentialsIR(
        kind="token_exchange", token_endpoint=url, client_id="gw", client_secret_env="X")})  # fmt: skip
    ex = TokenExchanger()
    try:
        with pytest.raises(CredentialError) as failed:
            await ex.token(broken, USER_JWT)
    finally:
        await ex.aclose()
    message = failed.value.message
    assert message.startswith("Token exchange at http://127.0.0.1:9/token failed: cannot reach it (")
    assert "pw" not in message and SECRET not in message and USER_JWT not in message


async def test_redirects_are_not_followed(policy_ir: IR) -> None:
    calls: list[httpx2.Request] = []
    ex = exchanger(calls, status=302, body={})
    with pytest.raises(CredentialError) as failed:
        await ex.token(delegations_from_ir(policy_ir)["tx"], USER_JWT)
    assert "HTTP 302" in failed.value.message and len(calls) == 1


# ---------------------------------------------------------------- per-user secrets


def test_secrets_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("alice: a1\nbob: 42\n")
    files = SecretsFiles()
    assert files.lookup(str(path), "alice") == "a1" and files.lookup(str(path), "bob") == "42"
    assert files.lookup(str(path), "carol") is None
    path.write_text("alice: a2\ncarol: c1\n")
    os.utime(path, ns=(1, 1))
    assert files.lookup(str(path), "alice") == "a2" and files.lookup(str(path), "carol") == "c1"
    assert files.lookup(str(path), "bob") is None


def test_a_secrets_file_named_through_a_link_is_read_through_it(tmp_path: Path) -> None:
    # The IR names the file as the policy does (ir/routes.near keeps links): a swapped link is read at once.
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "secrets.yaml").write_text("alice: a1\n")
    (tmp_path / "current").symlink_to("v1")
    files, named = SecretsFiles(), str(tmp_path / "current" / "secrets.yaml")
    assert files.lookup(named, "alice") == "a1"
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "secrets.yaml").write_text("alice: a2\n")
    (tmp_path / "next").symlink_to("v2")
    os.replace(tmp_path / "next", tmp_path / "current")  # ln -sfn v2 current; v1 stays
    assert files.lookup(named, "alice") == "a2"


@pytest.mark.parametrize("text", ["- alice\n- bob\n", "alice: [unclosed\n", "just a string\n"])
def test_an_unusable_secrets_file_refuses(tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    with caplog.at_level(logging.ERROR), pytest.raises(CredentialError) as failed:
        SecretsFiles().lookup(str(path), "alice")
    assert failed.value.kind is CREDENTIAL_UNAVAILABLE
    assert str(path) not in failed.value.message  # the caller learns nothing of the gateway's files
    assert "[unclosed" not in caplog.text  # the log names the file and the error type, never its content


def test_a_missing_secrets_file_refuses(tmp_path: Path) -> None:
    with pytest.raises(CredentialError) as failed:
        SecretsFiles().lookup(str(tmp_path / "nope.yaml"), "alice")
    assert failed.value.kind is CREDENTIAL_UNAVAILABLE


# ---------------------------------------------------------------- ext_authz checks, built by hand


def check_request(backend: str, *, body: str = "", method: str = "POST", headers: dict[str, str] | None = None,
                  jwt: dict[str, Any] | None = None) -> external_auth_pb2.CheckRequest:  # fmt: skip
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = method
    http.path = f"/mcp/{backend}"
    http.headers.update({":method": method, ":path": f"/mcp/{backend}", **(headers or {})})
    http.body = body
    request.attributes.context_extensions["backend"] = backend
    if jwt is not None:
        metadata = struct_pb2.Struct()
        metadata.update(jwt)
        request.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].CopyFrom(metadata)
    return request


def tool_call(tool: str, request_id: Any = 7, **arguments: Any) -> str:
    import json

    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments}})  # fmt: skip


@pytest.fixture
def service(policy_ir: IR) -> tuple[PolicyService, list[httpx2.Request]]:
    calls: list[httpx2.Request] = []
    svc = PolicyService(port=0, approvals_port=0)
    svc.credentials = CredentialIssuer(exchanger(calls))
    svc.update(policy_ir, "v1")
    return svc, calls


ALICE = {"corp": {"iss": "https://idp.test", "sub": "alice", "exp": 2_000_000_000}}
CALLER = {"x-agent-id": "helper", "authorization": f"Bearer {USER_JWT}", "x-api-key": "k", "x-agent-token": "t"}


async def test_check_sets_the_exchanged_token_and_removes_the_callers_credentials(
    service: tuple[PolicyService, list[httpx2.Request]], caplog: pytest.LogCaptureFixture
) -> None:
    svc, calls = service
    with caplog.at_level(logging.INFO, logger="agentxds.decisions"):
        response = await ExtAuthzServicer(svc).Check(
            check_request("tx", body=tool_call("whoami"), headers=CALLER, jwt=ALICE), None
        )  # type: ignore[arg-type]
        svc.flush_decisions()
    assert response.status.code == 0
    ok = response.ok_response
    assert [(h.header.key, h.header.value, h.append_action) for h in ok.headers] == [
        ("authorization", "Bearer backend-token-for-alice", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
    ]
    assert list(ok.headers_to_remove) == ["x-agent-id", "x-agent-token", "x-api-key"]
    assert len(calls) == 1
    # The decision log names the user and the kind of credential, never a secret.
    assert '"credential": "token_exchange"' in caplog.text and '"user": "alice"' in caplog.text
    for secret in ("backend-token-for-alice", USER_JWT, SECRET):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("body", "method"), [("", "GET"), ("", "DELETE"), ('{"jsonrpc":"2.0","id":1,"method":"tools/list"}', "POST")]
)
async def test_every_request_of_a_delegated_backend_gets_the_credential(
    service: tuple[PolicyService, list[httpx2.Request]], body: str, method: str
) -> None:
    svc, calls = service
    response = await ExtAuthzServicer(svc).Check(
        check_request("store", body=body, method=method, headers=CALLER, jwt=ALICE), None
    )  # type: ignore[arg-type]
    assert response.status.code == 0
    assert [(h.header.key, h.header.value) for h in response.ok_response.headers] == [
        ("x-github-token", "token alice-pat")
    ]
    assert list(response.ok_response.headers_to_remove) == ["authorization", "x-agent-id", "x-agent-token", "x-api-key"]
    assert calls == []


async def test_no_verified_user_is_refused(service: tuple[PolicyService, list[httpx2.Request]]) -> None:
    svc, calls = service
    # The token is in the header, but jwt_authn verified nothing: that is no user.
    response = await ExtAuthzServicer(svc).Check(
        check_request("tx", body=tool_call("whoami", "r1"), headers=CALLER), None
    )  # type: ignore[arg-type]
    assert response.status.code == 7
    denied = response.denied_response
    assert denied.status.code == 401
    import json

    body = json.loads(denied.body)
    assert body["id"] == "r1" and body["error"]["code"] == USER_TOKEN_REQUIRED.code
    assert body["error"]["data"] == {"reason": "user_token_required", "backend": "tx"}
    assert calls == []


async def test_a_user_without_a_secret_is_refused(service: tuple[PolicyService, list[httpx2.Request]]) -> None:
    svc, _ = service
    bob = {"corp": {"sub": "bob"}}
    response = await ExtAuthzServicer(svc).Check(
        check_request("store", body=tool_call("whoami"), headers=CALLER, jwt=bob), None
    )  # type: ignore[arg-type]
    assert response.status.code == 7 and response.denied_response.status.code == 403
    assert f'"code":{NO_USER_CREDENTIAL.code}' in response.denied_response.body
    assert "User 'bob' has no credential for backend 'store'" in response.denied_response.body


async def test_the_rule_is_decided_before_any_exchange(service: tuple[PolicyService, list[httpx2.Request]]) -> None:
    svc, calls = service
    refused = await ExtAuthzServicer(svc).Check(
        check_request("tx", body=tool_call("create_issue", repo="evil/x"), headers=CALLER, jwt=ALICE), None
    )  # type: ignore[arg-type]
    assert refused.status.code == 7 and '"reason":"condition_not_met"' in refused.denied_response.body
    assert calls == []
    allowed = await ExtAuthzServicer(svc).Check(
        check_request("tx", body=tool_call("create_issue", repo="acme/x"), headers=CALLER, jwt=ALICE), None
    )  # type: ignore[arg-type]
    assert allowed.status.code == 0 and len(calls) == 1
    assert allowed.ok_response.headers[0].header.value == "Bearer backend-token-for-alice"


@pytest.mark.parametrize("arguments", [[], "repo=acme/x", 7])
async def test_an_unreadable_call_of_a_conditional_tool_is_refused_not_credentialed(
    service: tuple[PolicyService, list[httpx2.Request]], arguments: object
) -> None:
    """A tools/call whose arguments are not an object is not "nothing to decide": no credential, a refusal."""
    import json

    svc, calls = service
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": {"name": "create_issue", "arguments": arguments}})  # fmt: skip
    refused = await ExtAuthzServicer(svc).Check(check_request("tx", body=body, headers=CALLER, jwt=ALICE), None)  # type: ignore[arg-type]
    assert refused.status.code == 7 and '"reason":"invalid_request"' in refused.denied_response.body
    assert '"id":5' in refused.denied_response.body
    assert calls == []  # no token was exchanged for it


async def test_token_endpoint_failure_refuses_with_a_json_rpc_error(policy_ir: IR) -> None:
    calls: list[httpx2.Request] = []
    svc = PolicyService(port=0, approvals_port=0)
    svc.credentials = CredentialIssuer(exchanger(calls, status=503, body={"error": "temporarily_unavailable"}))
    svc.update(policy_ir)
    response = await ExtAuthzServicer(svc).Check(
        check_request("tx", body=tool_call("whoami", 11), headers=CALLER, jwt=ALICE), None
    )  # type: ignore[arg-type]
    assert response.status.code == 7 and response.denied_response.status.code == 502
    body = response.denied_response.body
    assert f'"code":{CREDENTIAL_UNAVAILABLE.code}' in body and '"id":11' in body
    assert f"Token exchange at {TOKEN_URL} failed: it answered HTTP 503 (temporarily_unavailable)" in body
    assert SECRET not in body and USER_JWT not in body
