"""End to end: a rotated credential counts at once on connections opened before the rotation.

Envoy keeps a replaced listener's configuration for the connections it already
has until they drain (600 s by default, as docker compose and Kubernetes run
it). The agents' credentials are not the listener's: they live in the identify
filter's configuration, discovered (ECDS), which Envoy applies to the next
request on every connection, and the grants' RBAC (in the routes) reads the
name that filter gives; jwt_authn's configuration (providers, JWKS) is
discovered too. Here Envoy drains for 600 s and, while a client holds a
connection open, an API key is rotated (on that connection the new key is
accepted and the old one refused as unknown, for the grant and for a native
rule alike, reaching nothing) or a JWKS file's key replaced (the old key's
token is refused as invalid there), with no listener replaced or drained. Two
edits do replace the listener, and the kept connection keeps the old one: the
last JWT provider going away (its jwt_authn then gets the idle configuration,
verifying nothing) and the trusted header renamed (the filter refusing a
repeated credential header is discovered too, so the new name is checked
there). The policy-service filters are discovered too: a changed
`policyService.secret` is sent on a kept connection from its next request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from tests.e2e.gateway import (
    GATEWAY,
    IDENTITY_HEADER,
    POLICY_SECRET,
    POLICY_SECRET_YAML,
    RunningGateway,
    eventually,
    launch,
    stop_gateway,
    write_policies,
)
from tests.e2e.harness import tools_call_request
from tests.e2e.test_identity_edges import RUNNER  # runner, by the API key in runner.key
from tests.e2e.test_jwt import AUDIENCE, Issuer
from xds_server.core import errors
from xds_server.runtime.ports import free_port
from xds_server.xds import snapshot as xds

OLD_KEY, NEW_KEY = "k-old-0123456789abcdef", "k-new-0123456789abcdef"
POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: ["*"]
      tools: [whoami]
    - agents: [runner]
      tools: [list_issues]
      when: 'args.repo.startsWith("acme/")'
    - agents: ["*"]
      tools: [get_issue]
      when: 'args.repo.startsWith("acme/")'
    - agents: [executor]
      tools: [create_issue]
    - agents: [runner]
      tools: [summarize]
      when: 'args.text.size() < 100'
"""
BOTS = "https://bots.test"
SIGNER = """\
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: signer}
spec: {identity: {jwt: {provider: bots, value: bot-1}}}
"""
BOTS_PROVIDER = (f"jwtProviders: [{{name: bots, issuer: '{BOTS}', audiences: [{AUDIENCE}], tokenHeader: x-bot-token, "
                 "jwks: {file: bots-jwks.json}}]")  # fmt: skip
FIRST_KEY, SECOND_KEY = Issuer(BOTS, "bots-1"), Issuer(BOTS, "bots-2")
CALLS = {"whoami": {}, "list_issues": {"repo": "acme/web"}, "create_issue": {"repo": "acme/web", "title": "t"},
         "summarize": {"text": "short"}}  # fmt: skip
PROBE = {"get_issue": {"repo": "evil/web", "number": 1}}  # under a native rule of every agent's


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(mcp_backend_factory: Any, tmp_path: Any) -> AsyncIterator[RunningGateway]:
    backends = {"github": mcp_backend_factory(name="github")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port, policy_yaml=POLICY)
    with (policy_dir / "agents.yaml").open("a") as agents:
        agents.write(RUNNER + SIGNER)
    (policy_dir / "runner.key").write_text(OLD_KEY + "\n")
    gateway_file = policy_dir / "gateway.yaml"
    gateway_file.write_text(gateway_file.read_text().replace("identity: {", "identity: {" + BOTS_PROVIDER + ", "))
    (policy_dir / "bots-jwks.json").write_text(FIRST_KEY.jwks())
    control, envoy = await launch(policy_dir, tmp_path, listen_port, policy_port, drain_time_s=600)
    gw = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    yield gw
    await stop_gateway(gw)


async def _call(client: httpx.AsyncClient, gateway: RunningGateway, tool: str, key: str,
                header: str = "x-api-key") -> dict[str, Any]:  # fmt: skip
    _, headers, body = tools_call_request("modern", tool, {**CALLS, **PROBE}[tool])
    answer = await client.post(gateway.url(), headers=[*headers, (header, key)], content=body)
    return dict(answer.json())


def _listener_stats(gateway: RunningGateway) -> dict[str, int]:
    stats = gateway.envoy.stats()
    names = ("listener_manager.listener_modified", "listener_manager.total_listeners_draining",
             f"http.{GATEWAY}.downstream_cx_drain_close")  # fmt: skip
    missing = [n for n in names if n not in stats]
    assert not missing, f"Envoy has no such stats: {missing}"  # else the comparison below would prove nothing
    return {name: int(stats[name]) for name in names}


RUNNER_CALLS = ("whoami", "list_issues")
ECDS_STATS = "extension_config_discovery.http_filter"


async def test_a_rotated_key_counts_at_once_on_a_connection_opened_before(gateway: RunningGateway) -> None:
    backend = gateway.backends["github"]
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=one_connection, timeout=10) as kept:
        for tool in RUNNER_CALLS:
            assert "result" in await _call(kept, gateway, tool, OLD_KEY)
        listener_before = _listener_stats(gateway)
        backend.clear_requests()

        (gateway.policy_dir / "runner.key").write_text(NEW_KEY + "\n")

        async def rotated() -> bool:  # a new connection proves Envoy has the new version
            async with httpx.AsyncClient(timeout=10) as fresh:
                return "result" in await _call(fresh, gateway, "whoami", NEW_KEY)

        await eventually(rotated, timeout=15, what="the new key to be accepted")
        backend.clear_requests()
        for tool in RUNNER_CALLS:
            refused = await _call(kept, gateway, tool, OLD_KEY)
            # Not "not allowed for agent 'runner'": on this old connection too, the old key names no agent.
            assert refused["error"]["code"] == errors.UNKNOWN_AGENT.code, refused
            assert refused["error"]["data"]["reason"] == "unknown_agent", refused
        assert backend.requests() == []  # the old key reached nothing
        for tool in RUNNER_CALLS:  # the new key, on the same connection: the grant and the native rule
            assert "result" in await _call(kept, gateway, tool, NEW_KEY)
        assert _listener_stats(gateway) == listener_before  # no listener change, nothing drained
    tools = [json.loads(r["body"])["params"]["name"] for r in backend.requests()
             if r["body"] and json.loads(r["body"]).get("method") == "tools/call"]  # fmt: skip
    assert tools == list(RUNNER_CALLS)


async def test_a_withdrawn_signing_key_is_refused_on_a_connection_opened_before(gateway: RunningGateway) -> None:
    """The JWT providers' keys are not the listener's either: a key withdrawn from a JWKS file no longer
    verifies on a connection opened before (jwt_authn's configuration is discovered, like the identify
    filter's), and a key added verifies there at once."""
    backend = gateway.backends["github"]
    old_token, new_token = FIRST_KEY.token(sub="bot-1"), SECOND_KEY.token(sub="bot-1")
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=one_connection, timeout=10) as kept:
        assert "result" in await _call(kept, gateway, "whoami", old_token, "x-bot-token")
        listener_before = _listener_stats(gateway)

        (gateway.policy_dir / "bots-jwks.json").write_text(SECOND_KEY.jwks())

        async def rotated() -> bool:  # a new connection proves Envoy has the new version
            async with httpx.AsyncClient(timeout=10) as fresh:
                return "result" in await _call(fresh, gateway, "whoami", new_token, "x-bot-token")

        await eventually(rotated, timeout=15, what="the new signing key to be accepted")
        backend.clear_requests()
        refused = await _call(kept, gateway, "whoami", old_token, "x-bot-token")
        assert refused["error"]["code"] == errors.INVALID_CREDENTIALS.code, refused
        assert refused["error"]["data"]["reason"] == "invalid_credentials", refused
        assert backend.requests() == []  # the withdrawn key reached nothing
        assert "result" in await _call(kept, gateway, "whoami", new_token, "x-bot-token")
        assert _listener_stats(gateway) == listener_before  # no listener change, nothing drained


async def test_a_stranger_is_unknown_even_under_a_rule_of_every_agent(gateway: RunningGateway) -> None:
    """A native rule of every agent ("*") names no stranger: the refusal is unknown_agent, not its condition."""
    async with httpx.AsyncClient(timeout=10) as client:
        stranger = await _call(client, gateway, "get_issue", "k-guess-0123456789abcdef")
        agent = await _call(client, gateway, "get_issue", OLD_KEY)
    assert stranger["error"]["code"] == errors.UNKNOWN_AGENT.code
    assert stranger["error"]["data"]["reason"] == "unknown_agent", stranger
    assert agent["error"]["data"]["reason"] == "condition_not_met", agent  # runner's evil/web: the rule's condition


async def test_connections_kept_across_the_last_provider_and_agent_going_away(gateway: RunningGateway) -> None:
    """When the gateway stops having JWT providers, the new listener has no jwt_authn, but connections opened
    before keep the old listener, whose filter names its configuration. Envoy would keep the last one it
    had (a state-of-the-world response without it removes nothing), verifying tokens with the old keys on
    those connections until they drain: the control plane serves the filter's idle configuration instead
    (no providers), which Envoy takes; the kept connection goes on being answered, and a token proves
    nothing there."""
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=one_connection, timeout=10) as kept:
        assert "result" in await _call(kept, gateway, "whoami", OLD_KEY)
        modified = int(gateway.envoy.stats()["listener_manager.listener_modified"])
        gateway_file = gateway.policy_dir / "gateway.yaml"
        gateway_file.write_text(gateway_file.read_text().replace(BOTS_PROVIDER + ", ", ""))
        agents = gateway.policy_dir / "agents.yaml"
        agents.write_text(agents.read_text().replace(SIGNER, ""))

        async def reloaded() -> bool:  # a new connection sees the signer gone
            async with httpx.AsyncClient(timeout=10) as fresh:
                answer = await _call(fresh, gateway, "whoami", FIRST_KEY.token(sub="bot-1"), "x-bot-token")
                return answer.get("error", {}).get("data", {}).get("reason") == "unknown_agent"

        await eventually(reloaded, timeout=15, what="the provider to be gone")
        assert "result" in await _call(kept, gateway, "whoami", OLD_KEY)
        refused = await _call(kept, gateway, "whoami", FIRST_KEY.token(sub="bot-1"), "x-bot-token")
        assert refused["error"]["data"]["reason"] == "unknown_agent", refused
    stats = gateway.envoy.stats()
    assert int(stats["listener_manager.listener_modified"]) > modified  # the kept connection is the old listener's
    served = gateway.control.cache.get(GATEWAY)
    assert served is not None
    # The old listener's jwt_authn took the version without the provider (the idle configuration).
    assert stats[f"{ECDS_STATS}.envoy.filters.http.jwt_authn.version_text"] == served.type_version(xds.EXTENSION_CONFIG)


async def test_a_renamed_credential_header_is_checked_for_ambiguity_on_a_connection_opened_before(
    gateway: RunningGateway,
) -> None:
    """Renaming the trusted header replaces the listener; the filter refusing a repeated credential header is
    discovered like the identify filter, so on a kept connection the new name is checked too: two values of
    it are refused as ambiguous, never taken as whichever proves an agent (here, executor's grant)."""
    backend = gateway.backends["github"]
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=one_connection, timeout=10) as kept:
        assert "result" in await _call(kept, gateway, "whoami", "triage", IDENTITY_HEADER)
        gateway_file = gateway.policy_dir / "gateway.yaml"
        text = gateway_file.read_text()
        assert f"trustedHeader: {IDENTITY_HEADER}" in text
        gateway_file.write_text(text.replace(f"trustedHeader: {IDENTITY_HEADER}", "trustedHeader: x-caller"))

        async def renamed() -> bool:
            async with httpx.AsyncClient(timeout=10) as fresh:
                return "result" in await _call(fresh, gateway, "whoami", "triage", "x-caller")

        await eventually(renamed, timeout=15, what="the header to be renamed")
        backend.clear_requests()
        _, headers, body = tools_call_request("modern", "create_issue", CALLS["create_issue"])
        both = [("x-caller", "triage"), ("x-caller", "executor")]
        refused = (await kept.post(gateway.url(), headers=[*headers, *both], content=body)).json()
        assert refused["error"]["data"]["reason"] == errors.AMBIGUOUS_IDENTITY.reason, refused
        assert backend.requests() == []


async def test_a_filter_configuration_that_never_arrives_refuses_every_call(
    mcp_backend_factory: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    """Fail closed: a control plane that serves the listener but not the discovered filters' configurations
    (injected here: the pipeline publishes none) leaves Envoy's listener warming until its initial fetch
    timeout (15 s), then every call, of a known agent or not, is refused as the gateway not being ready, and
    nothing reaches the backend."""
    from xds_server.controlplane import pipeline

    publish = pipeline.by_type_url
    monkeypatch.setattr(pipeline, "by_type_url", lambda r: {**publish(r), xds.EXTENSION_CONFIG: ()})
    backends = {"github": mcp_backend_factory(name="github")}
    listen_port, policy_port = free_port(), free_port()
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, listen_port, backends, policy_port=policy_port)  # agents by the trusted header
    # The listener waits for Envoy's initial fetch timeout (15 s) before it accepts connections.
    control, envoy = await launch(policy_dir, tmp_path, listen_port, policy_port, startup_timeout_s=60)
    gateway = RunningGateway(policy_dir, control, envoy, listen_port, backends)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for who in ("triage", "nobody"):
                refused = await _call(client, gateway, "whoami", who, IDENTITY_HEADER)
                assert refused["error"]["code"] == errors.GATEWAY_ERROR.code, refused
                assert "Gateway not ready" in refused["error"]["message"], refused
        assert backends["github"].requests() == []
    finally:
        await stop_gateway(gateway)


async def test_the_policy_service_secret_is_replaced_without_refusing_kept_connections(
    gateway: RunningGateway,
) -> None:
    """Changing `policyService.secret` changes the policy-service filters' configurations, which are discovered
    (ECDS) like the identity filters': connections opened before send the new one from their next request,
    no listener is replaced, and the old one is refused at once (a leaked secret stops working)."""
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    gateway_file = gateway.policy_dir / "gateway.yaml"
    text = gateway_file.read_text()
    assert POLICY_SECRET_YAML in text
    new_secret = "rotated-policy-service-secret-0123456789abcdef"
    (gateway.policy_dir / "new.secret").write_text(new_secret + "\n")
    async with httpx.AsyncClient(limits=one_connection, timeout=10) as kept:
        assert "result" in await _call(kept, gateway, "summarize", OLD_KEY)  # decided by the policy service
        listener_before = _listener_stats(gateway)
        gateway_file.write_text(text.replace(POLICY_SECRET_YAML, "secret: {file: new.secret}"))
        service = gateway.control.policy_service
        assert service is not None

        async def replaced() -> bool:
            return service.index.admits(GATEWAY, new_secret) and not service.index.admits(GATEWAY, POLICY_SECRET)

        await eventually(replaced, timeout=15, what="the policy service to take the new secret")
        await gateway.wait_acked(gateway.control.cache.get(GATEWAY).version)  # type: ignore[union-attr]
        for _ in range(3):  # the kept connection, on its next requests: decided, with the new secret
            assert "result" in await _call(kept, gateway, "summarize", OLD_KEY)
        assert _listener_stats(gateway) == listener_before  # no listener change, nothing drained
