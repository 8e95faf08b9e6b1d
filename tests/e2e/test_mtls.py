"""End to end: mTLS with SPIFFE IDs. Agents present client certificates minted by
`xds_server.cli.pki`; the real Envoy gets its certificate and trust bundle over SDS
from the real control plane, checks certificates at the handshake, and RBAC
matches the verified SPIFFE ID.

The certificates live outside the policy directory, so rotation also exercises
the watcher's directories-of-referenced-files rule.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from mcp.shared.exceptions import MCPError

from tests.e2e.gateway import (
    GATEWAY,
    POLICY_YAML,
    TRUST_DOMAIN,
    TlsGateway,
    eventually,
    start_tls_gateway,
    stop_gateway,
)
from tests.e2e.harness import McpBackend, mcp_client, raw_post, ssl_context, tls_exchange, tls_peer_certificate
from tests.e2e.test_mcp_gateway import find_mcp_error, jsonrpc_error, tool_calls
from xds_server.cli import pki as certs
from xds_server.core import errors

MODES = ["modern", "legacy"]
MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
LIST_TOOLS = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": MODERN_META}})
PROTOCOL_HEADERS = {"mcp-protocol-version": MODERN, "mcp-method": "tools/list"}


@dataclass
class Pki:
    """A development PKI as `agentxds certs` writes it, plus certificates the gateway must refuse."""

    dir: Path
    ca_copy: Path  # the first CA's certificate, kept for clients when the bundle rotates

    def agent(self, name: str) -> tuple[Path, Path]:
        return certs.agent_paths(self.dir, name)

    @property
    def ca(self) -> Path:
        return certs.ca_paths(self.dir)[0]

    @property
    def gateway_cert(self) -> Path:
        return self.dir / "gateway.crt"

    @property
    def gateway_key(self) -> Path:
        return self.dir / "gateway.key"


def make_pki(root: Path) -> Pki:
    pki = certs.write_dev_pki(root / "pki", trust_domain=TRUST_DOMAIN, agents=["triage", "executor", "stranger"])
    copy = root / "gateway-ca.crt"
    copy.write_bytes(pki.ca_cert.read_bytes())
    # Refused at the handshake: triage's SPIFFE ID from another CA, and another trust domain from our CA.
    rogue = certs.write_dev_pki(root / "rogue", trust_domain=TRUST_DOMAIN, agents=["triage"])
    assert not rogue.ca_reused
    ca = certs.load_key_pair(pki.ca_cert, pki.ca_key)
    certs.write_key_pair(certs.mint_spiffe_cert(ca, "spiffe://evil.org/agent/triage"),
                         root / "evil.crt", root / "evil.key")  # fmt: skip
    return Pki(pki.directory, copy)


async def launch(root: Path, backend: McpBackend) -> tuple[TlsGateway, Pki]:
    pki = make_pki(root)
    gw = await start_tls_gateway(root / "gateway", {"github": backend}, cert=pki.gateway_cert, key=pki.gateway_key,
                                 bundle=pki.ca, ca_file=pki.ca_copy)  # fmt: skip
    return gw, pki


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls(
    mcp_backend_factory_module: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[TlsGateway, Pki]]:
    gw, pki = await launch(tmp_path_factory.mktemp("mtls"), mcp_backend_factory_module(name="github"))
    yield gw, pki
    await stop_gateway(gw)


@pytest.fixture
def backend(tls: tuple[TlsGateway, Pki]) -> McpBackend:
    b = tls[0].backends["github"]
    b.clear_requests()
    return b


def as_agent(tls: tuple[TlsGateway, Pki], name: str) -> dict[str, Any]:
    """mcp_client / raw_post keyword arguments for agent `name`'s certificate."""
    gw, pki = tls
    return {"verify": str(gw.ca_file), "cert": pki.agent(name)}


def ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind an httpx error (through causes and contexts)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def refused_at_handshake(gw: TlsGateway, cert: tuple[Path, Path] | None, ca_file: Path | None = None) -> str:
    """Assert the gateway's TLS layer refuses a client presenting `cert` (None: no certificate).

    Checked three ways: a TLS 1.2 client's handshake fails (ssl.SSLError, as
    httpx's ConnectError); a TLS 1.3 client, which only learns of the refusal
    when it reads, gets an ssl.SSLError (an alert, or a close without one) on
    a raw socket; and httpx over TLS 1.3 gets a transport error, never an
    HTTP answer. Returns the TLS 1.2 error text.
    """
    verify = str(ca_file or gw.ca_file)
    tls12 = ssl_context(verify, cert)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError) as handshake:
        await raw_post(gw.url(), LIST_TOOLS, PROTOCOL_HEADERS, verify=tls12)
    error = ssl_error_in(handshake.value)
    assert error is not None, repr(handshake.value)

    request = b"POST /mcp/github HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" \
              b"content-length: 2\r\n\r\n{}"  # fmt: skip
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(tls_exchange, "127.0.0.1", gw.listen_port, request, verify=verify, cert=cert)
    # (httpx maps most of them; an alert read at the wrong moment comes through as the SSLError itself)
    with pytest.raises((httpx.TransportError, ssl.SSLError)):
        await raw_post(gw.url(), LIST_TOOLS, PROTOCOL_HEADERS, verify=verify, cert=cert)
    return str(error)


def serial_seen(gw: TlsGateway, **tls_kwargs: Any) -> int:
    """Serial number of the certificate a new TLS connection to the gateway gets (blocking)."""
    der = tls_peer_certificate("127.0.0.1", gw.listen_port, verify=str(gw.ca_file), **tls_kwargs)
    return x509.load_der_x509_certificate(der).serial_number


# ---------------------------------------------------------------- identities


@pytest.mark.parametrize("mode", MODES)
async def test_each_agent_gets_exactly_its_tools(tls: tuple[TlsGateway, Pki], backend: McpBackend, mode: str) -> None:
    gw, _ = tls
    async with mcp_client(gw.url(), None, mode, **as_agent(tls, "triage")) as client:
        listed = await client.call_tool("list_issues", {"repo": "acme/web"})
        globbed = await client.call_tool("get_issue", {"repo": "acme/web", "number": 1})
        with pytest.raises(MCPError) as not_mine:
            await client.call_tool("create_issue", {"repo": "acme/web", "title": "x"})
    async with mcp_client(gw.url(), None, mode, **as_agent(tls, "executor")) as client:
        created = await client.call_tool("create_issue", {"repo": "acme/web", "title": "bug"})
        everyone = await client.call_tool("whoami", {})
        with pytest.raises(MCPError) as denied:
            await client.call_tool("list_issues", {"repo": "acme/web"})
    assert listed.content[0].text == "issues of acme/web: #1 bug, #2 feature"
    assert not globbed.is_error and not created.is_error and not everyone.is_error
    for refused, tool, agent in ((not_mine.value, "create_issue", "triage"), (denied.value, "list_issues", "executor")):
        assert refused.code == errors.TOOL_DENIED.code, refused
        assert refused.data["reason"] == "tool_not_allowed" and refused.data["tool"] == tool
        # Named as the agent Envoy recognised, not by the SPIFFE ID that proved it.
        assert f"for agent '{agent}'" in refused.message, refused
    assert tool_calls(backend) == ["list_issues", "get_issue", "create_issue", "whoami"]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_list_shows_each_agent_exactly_its_tools(tls: tuple[TlsGateway, Pki], mode: str) -> None:
    gw, _ = tls
    seen = {}
    for agent in ("triage", "executor"):
        async with mcp_client(gw.url(), None, mode, **as_agent(tls, agent)) as client:
            seen[agent] = {t.name for t in (await client.list_tools()).tools}
    assert seen == {"triage": {"list_issues", "get_issue", "whoami"}, "executor": {"create_issue", "whoami"}}


@pytest.mark.parametrize("mode", MODES)
async def test_valid_certificate_of_no_agent_is_an_unknown_agent(
    tls: tuple[TlsGateway, Pki], backend: McpBackend, mode: str
) -> None:
    gw, _ = tls
    # spiffe://example.org/agent/stranger: our CA, our trust domain, but no Agent has this ID.
    with pytest.raises(BaseException) as refused:
        async with mcp_client(gw.url(), None, mode, **as_agent(tls, "stranger")) as client:
            await client.call_tool("whoami", {})
    error = find_mcp_error(refused.value)
    assert error is not None, repr(refused.value)
    assert error.code == errors.UNKNOWN_AGENT.code and error.data == {"reason": "unknown_agent"}
    assert backend.requests() == []


async def test_a_header_does_not_make_a_caller_an_agent(tls: tuple[TlsGateway, Pki], backend: McpBackend) -> None:
    gw, _ = tls
    response = await raw_post(gw.url(), LIST_TOOLS, {**PROTOCOL_HEADERS, "x-agent-id": "triage"},
                              **as_agent(tls, "stranger"))  # fmt: skip
    assert response.status_code == 200
    assert jsonrpc_error(response)["error"]["code"] == errors.UNKNOWN_AGENT.code
    assert backend.requests() == []


# ---------------------------------------------------------------- refused at the handshake


async def test_certificate_from_another_ca_is_refused(tls: tuple[TlsGateway, Pki], backend: McpBackend) -> None:
    gw, pki = tls
    rogue = certs.agent_paths(pki.dir.parent / "rogue", "triage")  # triage's SPIFFE ID, signed by another CA
    error = await refused_at_handshake(gw, rogue)
    assert "UNKNOWN_CA" in error.upper(), error
    assert backend.requests() == []


async def test_no_client_certificate_is_refused(tls: tuple[TlsGateway, Pki], backend: McpBackend) -> None:
    gw, _ = tls
    error = await refused_at_handshake(gw, None)
    assert "HANDSHAKE_FAILURE" in error.upper(), error
    assert backend.requests() == []


async def test_certificate_of_another_trust_domain_is_refused(tls: tuple[TlsGateway, Pki], backend: McpBackend) -> None:
    gw, pki = tls
    evil = (pki.dir.parent / "evil.crt", pki.dir.parent / "evil.key")  # our CA, but spiffe://evil.org/...
    error = await refused_at_handshake(gw, evil)
    assert "CERTIFICATE_UNKNOWN" in error.upper(), error
    assert backend.requests() == []


async def test_clients_verify_the_gateway_certificate(tls: tuple[TlsGateway, Pki]) -> None:
    gw, pki = tls
    # A client that does not trust the gateway's CA refuses the gateway: plain TLS, the other way round.
    other_ca = certs.ca_paths(pki.dir.parent / "rogue")[0]
    with pytest.raises(httpx.ConnectError) as refused:
        await raw_post(gw.url(), LIST_TOOLS, PROTOCOL_HEADERS, verify=str(other_ca), cert=pki.agent("triage"))
    assert "CERTIFICATE_VERIFY_FAILED" in str(ssl_error_in(refused.value)).upper()


# ---------------------------------------------------------------- rotation


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_tls(mcp_backend_factory: Any, tmp_path: Path) -> AsyncIterator[tuple[TlsGateway, Pki]]:
    """A gateway of its own: these tests rewrite its certificate files."""
    gw, pki = await launch(tmp_path, mcp_backend_factory(name="github"))
    yield gw, pki
    await stop_gateway(gw)


async def _allowed(client: Any, tool: str, arguments: dict[str, Any]) -> bool:
    result = await client.call_tool(tool, arguments)
    return not result.is_error


async def test_rotated_gateway_certificate_is_served_without_restart_or_dropped_sessions(
    fresh_tls: tuple[TlsGateway, Pki],
) -> None:
    gw, pki = fresh_tls
    backend = gw.backends["github"]
    envoy_pid = gw.envoy.pid
    before = await asyncio.to_thread(serial_seen, gw, cert=pki.agent("triage"))
    async with mcp_client(gw.url(), None, "legacy", **as_agent(fresh_tls, "triage")) as client:
        assert await _allowed(client, "list_issues", {"repo": "acme/web"})

        # `agentxds certs` again: same CA (reused), new gateway certificate and key, rewritten in place.
        again = certs.write_dev_pki(pki.dir, trust_domain=TRUST_DOMAIN)
        assert again.ca_reused
        rotated = x509.load_pem_x509_certificate(pki.gateway_cert.read_bytes()).serial_number
        assert rotated != before

        async def serves_new() -> bool:
            return await asyncio.to_thread(serial_seen, gw, cert=pki.agent("triage")) == rotated

        took = await eventually(serves_new, timeout=10, what="Envoy to serve the rotated certificate")
        print(f"rotated certificate served after {took * 1000:.0f} ms")
        # The session opened before the rotation goes on, on the same Envoy.
        assert await _allowed(client, "get_issue", {"repo": "acme/web", "number": 1})

    assert gw.envoy.pid == envoy_pid and gw.envoy.running()
    assert backend.rpc_methods().count("initialize") == 1  # never re-initialised
    assert gw.control.last_reload is not None and gw.control.last_reload.ok


async def test_rotated_trust_bundle_refuses_old_agent_certificates(fresh_tls: tuple[TlsGateway, Pki]) -> None:
    gw, pki = fresh_tls
    envoy_pid = gw.envoy.pid
    old_triage = pki.dir.parent / "old-triage"
    old_triage.mkdir()
    old = tuple(Path(p).rename(old_triage / Path(p).name) for p in pki.agent("triage"))
    # keep the old agent certificate usable from its new place
    assert (await raw_post(gw.url(), LIST_TOOLS, PROTOCOL_HEADERS, verify=str(gw.ca_file), cert=old)).status_code == 200

    # A new CA: the trust bundle (same file) and the agents' certificates are re-issued with it.
    # The gateway's own certificate is left alone (clients still verify it with the old CA).
    gateway_pair = (pki.gateway_cert.read_bytes(), pki.gateway_key.read_bytes())
    certs.write_dev_pki(pki.dir, trust_domain=TRUST_DOMAIN, agents=["triage"], new_ca=True)
    certs.write_pem(pki.gateway_key, gateway_pair[1], private=True)
    certs.write_pem(pki.gateway_cert, gateway_pair[0])

    async def old_refused() -> bool:
        try:
            await raw_post(gw.url(), LIST_TOOLS, PROTOCOL_HEADERS, verify=str(gw.ca_file), cert=old)
        except (httpx.TransportError, ssl.SSLError):
            return True
        return False

    await eventually(old_refused, timeout=10, what="the old agent certificate to be refused")
    assert "UNKNOWN_CA" in (await refused_at_handshake(gw, old)).upper()
    response = await raw_post(gw.url(), LIST_TOOLS, PROTOCOL_HEADERS, **as_agent(fresh_tls, "triage"))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == 7 and "result" in response.json()
    assert gw.envoy.pid == envoy_pid


async def test_conditional_rule_applies_to_a_spiffe_agent(fresh_tls: tuple[TlsGateway, Pki]) -> None:
    gw, _ = fresh_tls
    conditional = POLICY_YAML.replace(
        "      tools: [create_issue]\n", "      tools: [create_issue]\n      when: 'args.repo.startsWith(\"acme/\")'\n"
    )
    assert conditional != POLICY_YAML
    reloads = gw.control.reloads
    gw.write("github-policy.yaml", conditional)
    await gw.wait_reloads(reloads + 1)
    assert gw.control.last_reload is not None and gw.control.last_reload.ok, gw.control.last_reload
    await gw.wait_acked(gw.control.cache.get(GATEWAY).version)
    async with mcp_client(gw.url(), None, "legacy", **as_agent(fresh_tls, "executor")) as client:
        allowed = await client.call_tool("create_issue", {"repo": "acme/web", "title": "t"})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("create_issue", {"repo": "evil/web", "title": "t"})
    assert not allowed.is_error
    assert refused.value.code == errors.TOOL_DENIED.code and refused.value.data["reason"] == "condition_not_met"
