"""TLS from the gateway to a backend: the cluster's UpstreamTlsContext (xds_server/translate/cluster.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import ir_kit
from tests.credentials_kit import Pki
from xds_server.ir.build import build_ir
from xds_server.ir.types import EndpointIR, RouteIR, UpstreamTlsIR
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_texts
from xds_server.translate.cluster import SYSTEM_CA_BUNDLE, build_cluster
from xds_server.translate.proto import to_dict


def backend(*hosts: str, tls: UpstreamTlsIR | None) -> RouteIR:
    return ir_kit.route("api", endpoints=tuple(EndpointIR(h, 443) for h in hosts), tls=tls)


def tls_context(b: RouteIR) -> dict[str, Any]:
    socket = to_dict(build_cluster(b))["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context.pop("@type") == "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    certs = Pki(tmp_path_factory.mktemp("pki"))
    ca, ca_file = certs.ca("backend")
    cert, key = certs.server(ca, "client", dns=("gateway.test",))
    return ca_file, cert, key


def test_plain_backends_have_no_transport_socket() -> None:
    assert "transport_socket" not in to_dict(build_cluster(backend("127.0.0.1", tls=None)))


def test_ca_inline_sni_and_san_of_a_dns_endpoint(pki: tuple[Path, Path, Path]) -> None:
    ca_file, _, _ = pki
    context = tls_context(backend("mcp.internal", tls=ir_kit.upstream_tls(str(ca_file), None, None, None)))
    assert context["sni"] == "mcp.internal"
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"inline_string": ca_file.read_text()}
    assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "mcp.internal"}}]
    assert "tls_certificates" not in context["common_tls_context"]


def test_ip_endpoints_send_no_sni_and_verify_the_ip_san() -> None:
    context = tls_context(backend("127.0.0.1", "10.0.0.2", tls=ir_kit.upstream_tls(None, None, None, None)))
    assert "sni" not in context
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": SYSTEM_CA_BUNDLE}  # no caFile: the host's system roots
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.2"}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}},
    ]


def test_an_explicit_sni_is_sent_and_verified() -> None:
    context = tls_context(backend("127.0.0.1", tls=ir_kit.upstream_tls(None, "mcp.example.com", None, None)))
    assert context["sni"] == "mcp.example.com"
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "mcp.example.com"}}
    ]


def test_several_dns_names_each_connection_sends_its_own() -> None:
    context = tls_context(backend("a.example.com", "b.example.com", tls=ir_kit.upstream_tls(None, None, None, None)))
    assert "sni" not in context
    assert context["auto_host_sni"] is True and context["auto_sni_san_validation"] is True


def test_client_certificate_inline(pki: tuple[Path, Path, Path]) -> None:
    ca_file, cert, key = pki
    context = tls_context(backend("mcp.internal", tls=ir_kit.upstream_tls(str(ca_file), None, str(cert), str(key))))
    [pair] = context["common_tls_context"]["tls_certificates"]
    assert pair == {"certificate_chain": {"inline_string": cert.read_text()},
                    "private_key": {"inline_string": key.read_text()}}  # fmt: skip


POLICIES = """apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: gw}
spec:
  listen: {port: 10403}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: api}
spec:
  endpoints: [{host: mcp.internal, port: 443}]
  tls: {caFile: CA_FILE}
"""


def test_an_unreadable_file_refuses_the_build(tmp_path: Path) -> None:
    missing = POLICIES.replace("CA_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(
        PolicyError, match=r"MCPBackend/api spec.tls.caFile: .*/missing.pem: cannot read it \(No such file"
    ):
        build_ir(load_texts({"api.yaml": missing}))
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(PolicyError, match="holds no PEM block"):
        build_ir(load_texts({"api.yaml": POLICIES.replace("CA_FILE", str(not_pem))}))
