"""The development PKI (xds_server.cli.pki) and `agentxds certs`."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from xds_server.cli import main
from xds_server.cli import pki as certs

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def verify_signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> None:
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    leaf.verify_directly_issued_by(ca)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_server_and_spiffe_certificates() -> None:
    ca = certs.mint_ca(now=NOW)
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0

    server = certs.mint_server_cert(ca, dns_names=["gw.example"], ip_addresses=["127.0.0.1", "::1"], days=10, now=NOW)
    verify_signed_by(server.certificate, ca.certificate)
    assert sans(server.certificate).get_values_for_type(x509.DNSName) == ["gw.example"]
    assert [str(ip) for ip in sans(server.certificate).get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert eku(server.certificate) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.certificate.not_valid_after_utc == NOW + dt.timedelta(days=10)
    assert server.certificate.not_valid_before_utc < NOW  # a little clock skew is tolerated

    agent = certs.mint_spiffe_cert(ca, "spiffe://example.org/agent/triage", now=NOW)
    verify_signed_by(agent.certificate, ca.certificate)
    assert sans(agent.certificate).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/agent/triage"
    ]
    assert sans(agent.certificate).get_values_for_type(x509.DNSName) == []
    assert eku(agent.certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert agent.serial_number != server.serial_number
    assert agent.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_leaf_never_outlives_its_ca() -> None:
    ca = certs.mint_ca(days=2, now=NOW)
    leaf = certs.mint_spiffe_cert(ca, "spiffe://example.org/agent/a", days=30, now=NOW)
    assert leaf.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ca: certs.mint_spiffe_cert(ca, "https://example.org/agent/a"), "not a SPIFFE ID"),
        (lambda ca: certs.mint_server_cert(ca, dns_names=[], ip_addresses=[]), "at least one"),
        (lambda ca: certs.mint_spiffe_cert(ca, "spiffe://example.org/a", days=0), "at least 1"),
        (lambda ca: certs.spiffe_id("Example.org", "a"), "trust domain"),
        (lambda ca: certs.spiffe_id("example.org", "Bad_Name"), "agent name"),
    ],
)
def test_bad_input_is_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(certs.mint_ca())


def test_write_pem_is_atomic_and_keys_are_private(tmp_path: Path) -> None:
    key = certs.write_pem(tmp_path / "d" / "a.key", b"secret", private=True)
    cert = certs.write_pem(tmp_path / "d" / "a.crt", b"public")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    certs.write_pem(key, b"rotated", private=True)
    assert key.read_bytes() == b"rotated"
    assert sorted(p.name for p in key.parent.iterdir()) == ["a.crt", "a.key"]  # no temporary file left behind


def test_dev_pki_layout_reuse_and_new_ca(tmp_path: Path) -> None:
    first = certs.write_dev_pki(tmp_path, trust_domain="example.org", agents=["triage", "executor"],
                                gateway_hosts=["gw.local"], gateway_ips=["10.0.0.5"])  # fmt: skip
    assert not first.ca_reused
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["agents/executor.crt", "agents/executor.key", "agents/triage.crt", "agents/triage.key",
                     "ca.crt", "ca.key", "gateway.crt", "gateway.key"]  # fmt: skip
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tmp_path.rglob("*.key"))
    ca = x509.load_pem_x509_certificate(first.ca_cert.read_bytes())
    gateway = x509.load_pem_x509_certificate(first.gateway_cert.read_bytes())
    assert sorted(sans(gateway).get_values_for_type(x509.DNSName)) == ["gw.local", "localhost"]
    assert first.agents["triage"][0] == "spiffe://example.org/agent/triage"

    # Again, for a new agent: same CA (new certificates chain to it), new gateway serial, same gateway names.
    second = certs.write_dev_pki(tmp_path, trust_domain="example.org", agents=["auditor"])
    assert second.ca_reused and list(second.agents) == ["auditor"]
    assert second.ca_cert.read_bytes() == first.ca_cert.read_bytes()
    verify_signed_by(x509.load_pem_x509_certificate(second.agents["auditor"][1].read_bytes()), ca)
    rotated = x509.load_pem_x509_certificate(second.gateway_cert.read_bytes())
    assert rotated.serial_number != gateway.serial_number
    assert sans(rotated) == sans(gateway)

    # --new-ca: a new CA, and every agent certificate re-issued with it.
    third = certs.write_dev_pki(tmp_path, trust_domain="example.org", new_ca=True)
    assert not third.ca_reused and sorted(third.agents) == ["auditor", "executor", "triage"]
    new_ca = x509.load_pem_x509_certificate(third.ca_cert.read_bytes())
    assert new_ca.public_key() != ca.public_key()
    for _, cert_path, _ in third.agents.values():
        verify_signed_by(x509.load_pem_x509_certificate(cert_path.read_bytes()), new_ca)
    snippet = certs.policy_snippet(third)
    assert f"trustBundleFile: {third.ca_cert}" in snippet
    assert 'spec: {identity: {spiffe: "spiffe://example.org/agent/triage"}}' in snippet


def test_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "pki"
    assert main(["certs", str(out_dir), "--trust-domain", "example.org", "--agent", "triage", "--agent", "executor",
                 "--gateway-host", "gw.local", "--days", "7"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "CA (new)" in out and "spiffe://example.org/agent/executor" in out and "certificateFile:" in out
    leaf = x509.load_pem_x509_certificate((out_dir / "agents" / "triage.crt").read_bytes())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < dt.timedelta(days=7, minutes=6)

    assert main(["certs", str(out_dir), "--trust-domain", "example.org"]) == 0
    assert "CA (reused)" in capsys.readouterr().out

    assert main(["certs", str(out_dir), "--trust-domain", "Not A Domain"]) == 1
    assert "trust domain" in capsys.readouterr().err
