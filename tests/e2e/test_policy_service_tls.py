"""TLS (and mTLS) between Envoy and the policy service, end to end through the real Envoy.

The gateway's `policyService.tls` names the CA of the policy service's certificate and Envoy's client
certificate; the policy service serves its decision ports with `--policy-tls-cert/-key` and asks for a
client certificate of `--policy-tls-client-ca`. Every path to Python goes over it: ext_authz over
HTTP (a quota), ext_proc over gRPC (a filtered tools/list), a virtual server's front (its route's
cluster), the tool guard's refresh of a pinned virtual server and `agentxds pin`. Whoever reaches the
ports without TLS, without a client certificate or with another CA's gets no answer at all; an Envoy
given the wrong CA refuses the calls that need a decision (fail closed), never lets them through.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from tests.e2e.gateway import (
    AGENTS_YAML,
    GATEWAY,
    IDENTITY_HEADER,
    POLICY_SECRET,
    POLICY_SECRET_YAML,
    RunningGateway,
    backend_yaml,
    eventually,
    launch,
    stop_gateway,
)
from tests.e2e.harness import MODERN_META, REPO_ROOT, mcp_client, python_env, raw_post, start_mcp_backend
from xds_server.authz.server_tls import ServerTls
from xds_server.cli import pki
from xds_server.core import errors
from xds_server.core.wire import CHECK_PREFIX, POLICY_SERVICE_SECRET_HEADER, ROUTE_CONTEXT_EXTENSION
from xds_server.runtime.ports import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

POLICY = """\
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules:
    - agents: [triage]
      tools: [whoami, list_issues]
    - description: executor's calls are counted by the policy service
      agents: [executor]
      tools: [create_issue]
      quota: {calls: 100, per: 1h}
---
apiVersion: agentxds.dev/v1
kind: VirtualMCPServer
metadata: {name: tools}
spec:
  backends: [{backend: github}]
  fanOut: {timeout: 2s, cache: 0s}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: tools}
spec:
  backend: tools
  rules:
    - agents: [triage]
      tools: [github__whoami]
"""


#: The names the tests use → where `agentxds certs`'s development PKI (pki.write_dev_pki) writes them: the
#: service's CA and certificate (gateway.crt: localhost, 127.0.0.1, agentxds-policy), Envoy's client
#: certificate, and another CA with a client certificate of its own.
_FILES = {"ca.crt": "service/ca.crt", "ca.key": "service/ca.key", "service.crt": "service/gateway.crt",
          "service.key": "service/gateway.key", "envoy.crt": "service/agents/envoy.crt",
          "envoy.key": "service/agents/envoy.key", "rogue-ca.crt": "rogue/ca.crt",
          "rogue.crt": "rogue/agents/envoy.crt", "rogue.key": "rogue/agents/envoy.key"}  # fmt: skip


@dataclass
class Pki:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / _FILES[name]


def _make_pki(root: Path) -> Pki:
    for name in ("service", "rogue"):
        pki.write_dev_pki(root / name, trust_domain="example.org", agents=["envoy"], gateway_hosts=["agentxds-policy"])
    return Pki(root)


def _gateway_yaml(listen_port: int, policy_port: int, authz_port: int, certs: Pki, ca: str = "ca.crt") -> str:
    tls = (f"tls: {{caFile: {certs.path(ca)}, certificateFile: {certs.path('envoy.crt')}, "
           f"privateKeyFile: {certs.path('envoy.key')}}}")  # fmt: skip
    return f"""\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  listen: {{address: 127.0.0.1, port: {listen_port}}}
  identity: {{trustedHeader: {IDENTITY_HEADER}}}
  policyService: {{host: 127.0.0.1, port: {policy_port}, extAuthz: http, extAuthzHttpPort: {authz_port},
                  {POLICY_SECRET_YAML}, {tls}}}
"""


@dataclass
class World:
    gateway: RunningGateway
    certs: Pki
    authz_port: int
    policy_port: int

    def write_gateway(self, ca: str) -> None:
        self.gateway.write("gateway.yaml", _gateway_yaml(self.gateway.listen_port, self.policy_port,
                                                         self.authz_port, self.certs, ca))  # fmt: skip


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    workdir = tmp_path_factory.mktemp("policy-tls")
    certs = _make_pki(workdir / "pki")
    github = start_mcp_backend(workdir, name="github")
    listen_port, policy_port, authz_port = free_port(), free_port(), free_port()
    policies = workdir / "policies"
    policies.mkdir()
    (policies / "gateway.yaml").write_text(_gateway_yaml(listen_port, policy_port, authz_port, certs))
    (policies / "agents.yaml").write_text(AGENTS_YAML)
    (policies / "backends.yaml").write_text(backend_yaml("github", github))
    (policies / "policy.yaml").write_text(POLICY)
    served = ServerTls(certs.path("service.crt"), certs.path("service.key"), certs.path("ca.crt"))
    try:
        control, envoy = await launch(policies, workdir, listen_port, policy_port, authz_port, policy_tls=served)
        gateway = RunningGateway(policies, control, envoy, listen_port, {"github": github})
        yield World(gateway, certs, authz_port, policy_port)
        await stop_gateway(gateway)
    finally:
        github.stop()


async def test_every_path_to_the_policy_service_goes_over_tls(world: World) -> None:
    """A quota'd call (ext_authz over HTTP), a filtered list (ext_proc over gRPC) and a virtual server's call
    (its front) work in both protocol revisions, each over TLS with Envoy's client certificate."""
    url = world.gateway.url("github")
    service = world.gateway.control.policy_service
    assert service is not None
    for mode in ("modern", "legacy"):
        checks = service.checks["github"]
        async with mcp_client(url, {IDENTITY_HEADER: "executor"}, mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool("create_issue", {"repo": "acme/web", "title": "over tls"})
            assert not result.is_error, result
            assert {t.name for t in (await client.list_tools()).tools} == {"create_issue"}  # ext_proc filtered
        assert service.checks["github"] == checks + 1  # decided by the policy service, over TLS
        async with mcp_client(f"http://127.0.0.1:{world.gateway.listen_port}/vmcp/tools", {IDENTITY_HEADER: "triage"},
                              mode) as client:  # type: ignore[arg-type]  # fmt: skip
            assert {t.name for t in (await client.list_tools()).tools} == {"github__whoami"}
            assert (await client.call_tool("github__whoami", {})).content[0].text == "server github"  # type: ignore[union-attr]


def _context(certs: Pki, client: str | None, ca: str = "ca.crt") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.path(ca)))
    if client is not None:
        context.load_cert_chain(certs.path(f"{client}.crt"), certs.path(f"{client}.key"))
    return context


def _call_body() -> str:
    return json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": {"name": "create_issue", "arguments": {"repo": "acme/web", "title": "x"},
                                  "_meta": MODERN_META}})  # fmt: skip


async def _handshake(port: int, context: ssl.SSLContext | None, payload: bytes) -> bytes:
    """What the port answers `payload` (over TLS with `context`), b"" if it closes or refuses the handshake."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None),
            timeout=5,
        )
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=5)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


async def test_without_tls_or_the_right_client_certificate_nothing_is_answered(world: World) -> None:
    """Plain HTTP, TLS without a client certificate and a certificate of another CA get no answer from the HTTP
    port, even with the secret; gRPC the same. With Envoy's certificate (and the secret) it answers: only
    the certificate and the secret stand between."""
    body = _call_body().encode()
    request = (f"POST {CHECK_PREFIX}github/mcp/github HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               f"{IDENTITY_HEADER}: executor\r\n{POLICY_SERVICE_SECRET_HEADER}: {POLICY_SECRET}\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    port = world.authz_port
    assert await _handshake(port, None, request) == b""  # plain text on a TLS port
    assert await _handshake(port, _context(world.certs, None), request) == b""  # no client certificate
    assert await _handshake(port, _context(world.certs, "rogue"), request) == b""  # another CA's
    answer = await _handshake(port, _context(world.certs, "envoy"), request)
    assert answer.startswith(b"HTTP/1.1 200"), answer  # Envoy's certificate and the secret: a decision
    # The certificate alone is not enough: the secret is still asked for.
    unproven = request.replace(f"{POLICY_SERVICE_SECRET_HEADER}: {POLICY_SECRET}\r\n".encode(), b"")
    answer = await _handshake(port, _context(world.certs, "envoy"), unproven)
    reply = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert reply["id"] == 5 and reply["error"]["code"] == errors.POLICY_SERVICE_UNAVAILABLE.code, reply
    # A client that does not trust the service's CA does not talk to it either (it is the service it claims).
    assert await _handshake(port, _context(world.certs, "envoy", ca="rogue-ca.crt"), request) == b""

    check = external_auth_pb2.CheckRequest()
    check.attributes.context_extensions[ROUTE_CONTEXT_EXTENSION] = "github"
    check.attributes.request.http.body = _call_body()
    target = f"127.0.0.1:{world.policy_port}"
    metadata = [(POLICY_SERVICE_SECRET_HEADER, POLICY_SECRET)]
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, metadata=metadata, timeout=5)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    ca = world.certs.path("ca.crt").read_bytes()
    without = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(target, without) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, metadata=metadata, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(root_certificates=ca, private_key=world.certs.path("envoy.key").read_bytes(),
                                             certificate_chain=world.certs.path("envoy.crt").read_bytes())  # fmt: skip
    async with grpc.aio.secure_channel(target, with_cert) as channel:
        answered = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, metadata=metadata, timeout=5)
        assert answered.HasField("status")  # decided (refused here: the check names no agent)


async def test_an_envoy_that_does_not_trust_the_service_refuses_decided_calls(world: World) -> None:
    """The Gateway's caFile changed to another CA: Envoy can no longer verify the policy service, so a call
    that needs a decision is refused (-32050, the request's id), never let through; a natively decided call
    still works. Back to the right CA, decisions resume."""
    url = world.gateway.url("github")
    github = world.gateway.backends["github"]
    body = _call_body()
    headers = {IDENTITY_HEADER: "executor", "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
               "mcp-name": "create_issue"}  # fmt: skip
    try:
        world.write_gateway("rogue-ca.crt")

        async def refused() -> bool:
            answer = await raw_post(url, body, headers)
            reply = answer.json()
            return "error" in reply and reply["error"]["code"] == errors.POLICY_SERVICE_UNAVAILABLE.code

        await eventually(refused, 15, "calls needing a decision refused with the wrong CA")
        before = github.tool_calls("create_issue")
        reply = (await raw_post(url, body, headers)).json()
        assert reply["id"] == 5 and reply["error"]["code"] == errors.POLICY_SERVICE_UNAVAILABLE.code, reply
        assert github.tool_calls("create_issue") == before  # never reached the backend
        # Native: Envoy alone decides (a list, which ext_proc filters, is refused too: fail closed).
        native = json.loads(body.replace("create_issue", "whoami"))
        native["params"]["arguments"] = {}
        whoami = {**headers, IDENTITY_HEADER: "triage", "mcp-name": "whoami"}
        reply = (await raw_post(url, json.dumps(native), whoami)).json()
        assert reply["result"]["content"][0]["text"] == "server github", reply
    finally:
        world.write_gateway("ca.crt")

    async def allowed() -> bool:
        return "result" in (await raw_post(url, body, headers)).json()

    await eventually(allowed, 15, "decisions over TLS again with the right CA")


async def test_a_renewed_certificate_is_served_without_a_restart(world: World) -> None:
    """The policy service's certificate files replaced (as cert-manager renews them): the next connection gets
    the new certificate, with no restart, and Envoy's decisions go on."""
    certs = world.certs
    ca = pki.load_key_pair(certs.path("ca.crt"), certs.path("ca.key"))
    renewed = pki.mint_server_cert(ca, ip_addresses=("127.0.0.1",), common_name="agentxds policy service, renewed")
    pki.write_key_pair(renewed, certs.path("service.crt"), certs.path("service.key"))

    async def served_name(port: int, alpn: str) -> str | None:
        context = _context(certs, "envoy")
        context.set_alpn_protocols([alpn])  # the gRPC port answers h2 clients only
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
        except (ssl.SSLError, ConnectionError):
            return None
        peer = writer.get_extra_info("ssl_object").getpeercert()
        writer.close()
        return dict(x[0] for x in peer["subject"]).get("commonName")

    async def serves_renewed() -> bool:
        names = [await served_name(world.authz_port, "http/1.1"), await served_name(world.policy_port, "h2")]
        return names == ["agentxds policy service, renewed"] * 2

    await eventually(serves_renewed, 10, "the renewed certificate served on both decision ports")
    ca_pem = certs.path("ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=certs.path("envoy.key").read_bytes(),
                                         certificate_chain=certs.path("envoy.crt").read_bytes())  # fmt: skip
    async with grpc.aio.secure_channel(f"127.0.0.1:{world.policy_port}", creds) as channel:
        check = external_auth_pb2.CheckRequest()
        check.attributes.context_extensions[ROUTE_CONTEXT_EXTENSION] = "github"
        answered = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
            check, metadata=[(POLICY_SERVICE_SECRET_HEADER, POLICY_SECRET)], timeout=5
        )
        assert answered.HasField("status")
    url = world.gateway.url("github")
    async with mcp_client(url, {IDENTITY_HEADER: "executor"}) as client:
        assert not (await client.call_tool("create_issue", {"repo": "acme/web", "title": "renewed"})).is_error


async def test_pin_and_the_tool_guard_read_a_virtual_servers_tools_over_tls(world: World) -> None:
    """`agentxds pin` of a virtual server reads its tools from the front over TLS, with the gateway's CA and
    Envoy's client certificate (as Envoy does); pinned, the tool guard's own refresh reads them there too."""
    gateway = world.gateway
    reloads = gateway.control.reloads
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "xds_server.cli", "pin",
                                   str(gateway.policy_dir), "--backend", "tools"], capture_output=True, text=True, timeout=60,
                                   cwd=REPO_ROOT, env=python_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tool(s) of tools from https://127.0.0.1:" in done.stdout, done.stdout
    lock = gateway.policy_dir / "tools.lock.yaml"
    assert "github__whoami" in lock.read_text()
    await gateway.wait_reloads(reloads + 1)
    service = gateway.control.policy_service
    assert service is not None
    guard = service.handlers["mcp"].guard  # type: ignore[attr-defined]
    try:

        async def read_by_the_guard() -> bool:  # no client lists the tools here: only the refresh can
            verdict = guard.verdict("tools", "github__whoami")
            return verdict is not None and verdict.usable

        await eventually(read_by_the_guard, 20, "the tool guard's refresh to read the front over TLS")
    finally:
        reloads = gateway.control.reloads
        lock.unlink()
        await gateway.wait_reloads(reloads + 1)
