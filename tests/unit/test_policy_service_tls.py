"""`policyService.tls`: the policy, what Envoy gets (both policy-service clusters and a virtual server's
front over TLS), and the policy service's own side (`ServedTls`: files checked, renewals followed)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext

from xds_server.authz import server_tls
from xds_server.authz.server_tls import ServedTls, ServerTls, ServerTlsError
from xds_server.cli import pki
from xds_server.controlplane.pipeline import compile_policies, referenced_files
from xds_server.controlplane.render import dump_yaml, xds_document
from xds_server.core.secrets import redacted
from xds_server.policy.diagnostics import PolicyError
from xds_server.translate.policy_service import POLICY_CLUSTER, POLICY_HTTP_CLUSTER

POLICIES = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  listen: {{address: 127.0.0.1, port: 10000}}
  identity: {{trustedHeader: x-agent-id}}
  policyService:
    host: 127.0.0.1
{tls}---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {{name: github}}
spec:
  endpoints: [{{host: 127.0.0.1, port: 18081}}]
---
apiVersion: agentxds.dev/v1
kind: VirtualMCPServer
metadata: {{name: tools}}
spec:
  backends: [{{backend: github}}]
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {{name: triage}}
spec: {{identity: {{header: triage}}}}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: github}}
spec:
  backend: github
  rules: [{{agents: [triage], tools: [create_issue], quota: {{calls: 5, per: 1m}}}}]
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {{name: tools}}
spec:
  backend: tools
  rules: [{{agents: [triage], tools: ["*"]}}]
"""


def _pki(root: Path) -> Path:
    """`agentxds certs`'s development PKI: the CA, the service's certificate (gateway.crt: localhost,
    127.0.0.1) and Envoy's client certificate (agents/envoy.crt)."""
    return pki.write_dev_pki(root, trust_domain="example.org", agents=["envoy"]).directory


def _write(root: Path, tls: str) -> Path:
    policies = root / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "all.yaml").write_text(POLICIES.format(tls=tls))
    return policies


def _context(cluster: object) -> UpstreamTlsContext:
    socket = cluster.transport_socket  # type: ignore[attr-defined]
    assert socket.name == "envoy.transport_sockets.tls"
    context = UpstreamTlsContext()
    assert socket.typed_config.Unpack(context)
    return context


def test_both_clusters_and_the_virtual_front_go_over_tls(tmp_path: Path) -> None:
    certs = _pki(tmp_path / "pki")
    tls = (f"    tls: {{caFile: {certs / 'ca.crt'}, certificateFile: {certs / 'agents' / 'envoy.crt'}, "
           f"privateKeyFile: {certs / 'agents' / 'envoy.key'}}}\n")  # fmt: skip
    ir, resources = compile_policies(_write(tmp_path, tls))
    clusters = {c.name: c for c in resources["gw"].clusters}
    grpc_tls, http_tls = _context(clusters[POLICY_CLUSTER]), _context(clusters[POLICY_HTTP_CLUSTER])
    assert list(grpc_tls.common_tls_context.alpn_protocols) == ["h2"]  # gRPC servers want h2 negotiated
    assert list(http_tls.common_tls_context.alpn_protocols) == ["http/1.1"]
    for context in (grpc_tls, http_tls):
        common = context.common_tls_context
        assert common.validation_context.trusted_ca.inline_string == (certs / "ca.crt").read_text()
        [san] = common.validation_context.match_typed_subject_alt_names
        assert san.san_type == san.IP_ADDRESS and san.matcher.exact == "127.0.0.1"
        [client] = common.tls_certificates
        assert client.certificate_chain.inline_string == (certs / "agents" / "envoy.crt").read_text()
    front = next(c for name, c in clusters.items() if "tools" in name and c.HasField("transport_socket"))
    assert (
        _context(front).common_tls_context.validation_context.trusted_ca.inline_string == (certs / "ca.crt").read_text()
    )
    # The files are followed: a renewed client certificate or CA is published like a policy edit.
    assert {certs / "ca.crt", certs / "agents" / "envoy.crt", certs / "agents" / "envoy.key"} <= referenced_files(ir)
    # Envoy's private key is in its configuration (inline, as for backends' client certificates); never shown.
    text = dump_yaml(xds_document(resources), sort_keys=True)
    key = (certs / "agents" / "envoy.key").read_bytes()
    assert b"PRIVATE KEY" not in text.encode() and redacted(key) in text


def test_without_tls_the_clusters_are_plain(tmp_path: Path) -> None:
    _, resources = compile_policies(_write(tmp_path, ""))
    for cluster in resources["gw"].clusters:
        assert not cluster.HasField("transport_socket"), cluster.name


def test_a_named_host_is_sent_and_verified(tmp_path: Path) -> None:
    certs = _pki(tmp_path / "pki")
    _, resources = compile_policies(
        _write(tmp_path, f"    tls: {{caFile: {certs / 'ca.crt'}, sni: policy.internal}}\n")
    )
    context = _context(next(c for c in resources["gw"].clusters if c.name == POLICY_CLUSTER))
    assert context.sni == "policy.internal"
    [san] = context.common_tls_context.validation_context.match_typed_subject_alt_names
    assert san.san_type == san.DNS and san.matcher.exact == "policy.internal"


@pytest.mark.parametrize(
    ("tls", "field", "why"),
    [
        ("    tls: {sni: x}\n", "caFile", "missing required field"),
        ("    tls: {caFile: missing.crt}\n", "caFile", "missing.crt"),
        (
            "    tls: {caFile: ca.crt, certificateFile: envoy.crt}\n",
            "tls",
            "give both certificateFile and privateKeyFile",
        ),
    ],
)
def test_an_unusable_tls_setting_names_file_line_and_field(tmp_path: Path, tls: str, field: str, why: str) -> None:
    certs = _pki(tmp_path / "pki")
    policies = _write(tmp_path, tls)
    for name, source in (("ca.crt", certs / "ca.crt"), ("envoy.crt", certs / "agents" / "envoy.crt")):
        (policies / name).write_bytes(source.read_bytes())
    with pytest.raises(PolicyError) as refused:
        compile_policies(policies)
    text = str(refused.value)
    assert "all.yaml:" in text and "policyService" in text and field in text and why in text, text


# ---------------------------------------------------------------- the policy service's side


def test_served_tls_refuses_unusable_files(tmp_path: Path) -> None:
    certs = _pki(tmp_path / "pki")
    with pytest.raises(ServerTlsError, match="not PEM"):
        (tmp_path / "junk").write_text("junk")
        ServedTls(ServerTls(tmp_path / "junk", certs / "gateway.key"))
    with pytest.raises(ServerTlsError, match="cannot be used together"):
        ServedTls(ServerTls(certs / "gateway.crt", certs / "agents" / "envoy.key"))  # another certificate's key
    with pytest.raises(ServerTlsError, match="No such file"):
        ServedTls(ServerTls(certs / "gateway.crt", certs / "gateway.key", tmp_path / "absent.crt"))


def test_served_tls_asks_for_client_certificates_only_with_a_client_ca(tmp_path: Path) -> None:
    certs = _pki(tmp_path / "pki")
    assert ServedTls(ServerTls(certs / "gateway.crt", certs / "gateway.key")).ssl_context().verify_mode == ssl.CERT_NONE
    mutual = ServedTls(ServerTls(certs / "gateway.crt", certs / "gateway.key", certs / "ca.crt"))
    assert mutual.ssl_context().verify_mode == ssl.CERT_REQUIRED


def test_a_half_written_renewal_keeps_the_last_good_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setattr(server_tls, "_LOOK_EVERY_S", 0.0)
    certs = _pki(tmp_path / "pki")
    served = ServedTls(ServerTls(certs / "gateway.crt", certs / "gateway.key"))
    first = served._material
    ca = pki.load_key_pair(certs / "ca.crt", certs / "ca.key")
    renewed = pki.mint_server_cert(ca, ip_addresses=("127.0.0.1",))
    pki.write_pem(certs / "gateway.crt", renewed.cert_pem)  # the key not yet written
    served._follow()
    assert served._material is first and "still serving the last good certificate" in caplog.text
    caplog.clear()
    served._follow()  # tried again, logged once
    assert served._material is first and "still serving" not in caplog.text
    pki.write_pem(certs / "gateway.key", renewed.key_pem, private=True)
    served._follow()
    assert served._material.certificate == renewed.cert_pem


def test_a_kubernetes_secret_volume_renewal_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>; a renewal writes a new
    timestamped directory, swaps ..data and removes the old directory."""
    monkeypatch.setattr(server_tls, "_LOOK_EVERY_S", 0.0)
    certs = _pki(tmp_path / "pki")
    volume = tmp_path / "volume"
    (volume / "..2026_01").mkdir(parents=True)
    for name, source in (("service.crt", "gateway.crt"), ("service.key", "gateway.key")):
        (volume / "..2026_01" / name).write_bytes((certs / source).read_bytes())
        (volume / name).symlink_to(Path("..data") / name)
    (volume / "..data").symlink_to("..2026_01")
    served = ServedTls(ServerTls((volume / "service.crt").absolute(), (volume / "service.key").absolute()))
    ca = pki.load_key_pair(certs / "ca.crt", certs / "ca.key")
    renewed = pki.mint_server_cert(ca, ip_addresses=("127.0.0.1",))
    (volume / "..2026_02").mkdir()
    pki.write_key_pair(renewed, volume / "..2026_02" / "service.crt", volume / "..2026_02" / "service.key")
    (volume / "..data_tmp").symlink_to("..2026_02")
    (volume / "..data_tmp").replace(volume / "..data")
    shutil.rmtree(volume / "..2026_01")
    served._follow()
    assert served._material.certificate == renewed.cert_pem


def test_grpc_is_handed_a_new_configuration_only_when_the_files_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_tls, "_LOOK_EVERY_S", 0.0)
    handed: list[object] = []
    monkeypatch.setattr(server_tls.grpc, "dynamic_ssl_server_credentials",
                        lambda initial, fetch, require_client_authentication: handed.append(fetch) or "creds")  # fmt: skip
    certs = _pki(tmp_path / "pki")
    served = ServedTls(ServerTls(certs / "gateway.crt", certs / "gateway.key", certs / "ca.crt"))
    assert served.grpc_credentials() == "creds"
    [fetch] = handed
    assert fetch() is None  # unchanged: gRPC keeps its configuration
    (certs / "gateway.key").write_text("not a key")  # a half-written renewal
    assert fetch() is None
    ca = pki.load_key_pair(certs / "ca.crt", certs / "ca.key")
    pki.write_key_pair(pki.mint_server_cert(ca, ip_addresses=("127.0.0.1",)), certs / "gateway.crt",
                       certs / "gateway.key")  # fmt: skip
    assert fetch() is not None  # the renewed pair
    assert fetch() is None


async def _handshake(port: int, client: ssl.SSLContext) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1")
    except (ssl.SSLError, ConnectionError):
        return False
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), timeout=5) == b"pong"  # TLS 1.3: a refusal shows here
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        writer.close()


async def test_a_changed_client_ca_file_is_enforced_from_the_next_handshake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client CA file replaced by another CA's: a client of the old CA is refused from the next handshake
    (no session resumed), one of the new CA accepted; the verify mode holds after the context is swapped."""
    monkeypatch.setattr(server_tls, "_LOOK_EVERY_S", 0.0)
    certs = _pki(tmp_path / "pki")
    other = pki.mint_ca("another client CA")
    pki.write_key_pair(pki.mint_spiffe_cert(other, "spiffe://example.org/envoy"), certs / "agents" / "other.crt",
                       certs / "agents" / "other.key")  # fmt: skip
    served = ServedTls(ServerTls(certs / "gateway.crt", certs / "gateway.key", certs / "ca.crt"))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            if await reader.read(4) == b"ping":
                writer.write(b"pong")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=served.ssl_context())
    port = server.sockets[0].getsockname()[1]

    service_ca = (certs / "ca.crt").read_text()  # what clients verify the service with, whatever happens next

    def client(name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=service_ca)
        if name is not None:
            context.load_cert_chain(certs / "agents" / f"{name}.crt", certs / "agents" / f"{name}.key")
        return context

    try:
        envoy = client("envoy")
        assert await _handshake(port, envoy)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=envoy, server_hostname="127.0.0.1")
        writer.write(b"ping")
        assert await reader.read(4) == b"pong"  # TLS 1.3 tickets would have come by now
        tls = writer.get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.3" and (tls.session is None or not tls.session.has_ticket)  # nothing to resume
        writer.close()
        assert not await _handshake(port, client(None)) and not await _handshake(port, client("other"))
        pki.write_pem(certs / "ca.crt", other.cert_pem)
        assert not await _handshake(port, envoy)  # the old CA's client
        assert await _handshake(port, client("other"))  # the new CA's
        assert not await _handshake(port, client(None))  # still required after the swap
    finally:
        server.close()
        await server.wait_closed()


def test_serve_wants_the_certificate_and_its_key_together(tmp_path: Path) -> None:
    from argparse import Namespace

    from xds_server.cli.serve import _server_tls

    def args(cert: Path | None, key: Path | None, ca: Path | None, role: str = "all") -> Namespace:
        return Namespace(policy_tls_cert=cert, policy_tls_key=key, policy_tls_client_ca=ca, role=role)

    assert _server_tls(args(None, None, None)) is None
    for cert, key, ca in ((tmp_path, None, None), (None, tmp_path, None), (None, None, tmp_path)):
        with pytest.raises(SystemExit, match="--policy-tls-cert and --policy-tls-key go together"):
            _server_tls(args(cert, key, ca))
    with pytest.raises(SystemExit, match="are for the policy service"):
        _server_tls(args(tmp_path / "c", tmp_path / "k", None, role="xds"))
    # Kept as given (absolute, symlinks not followed): a Secret volume's renewal swaps the link.
    link = tmp_path / "link.crt"
    link.symlink_to(tmp_path / "c")
    assert _server_tls(args(link, tmp_path / "k", None)) == ServerTls(link, tmp_path / "k", None)


def test_a_policy_service_without_tls_says_so_for_a_gateway_that_asks_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from xds_server.authz.service import PolicyService

    certs = _pki(tmp_path / "pki")
    ir, _ = compile_policies(_write(tmp_path, f"    tls: {{caFile: {certs / 'ca.crt'}}}\n"))
    service = PolicyService()
    service.update(ir)
    assert "gateway 'gw' reaches its policy service over TLS (policyService.tls), but this policy service serves " \
           "plain HTTP/gRPC" in caplog.text  # fmt: skip
    caplog.clear()
    service.update(ir)  # said once, not on every reload
    assert "reaches its policy service" not in caplog.text
    plain, _ = compile_policies(_write(tmp_path / "plain", ""))
    service.update(plain)
    service.update(ir)  # gone, then back: said again
    assert caplog.text.count("reaches its policy service") == 1
    caplog.clear()
    PolicyService(tls=ServerTls(certs / "gateway.crt", certs / "gateway.key")).update(ir)
    assert "reaches its policy service" not in caplog.text
