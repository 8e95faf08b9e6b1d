"""Gateway TLS → listener transport socket + SDS secrets; verify, render and the pipeline around them."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import DownstreamTlsContext

from xds_server.cli import pki as certs
from xds_server.controlplane.pipeline import Pipeline, compile_policies, referenced_files, to_snapshot
from xds_server.controlplane.render import dump_yaml, redacted, xds_document
from xds_server.controlplane.verify import check_consistent
from xds_server.controlplane.watch import is_relevant, outside_directories
from xds_server.translate import GatewayResources
from xds_server.translate.tls import certificate_secret_name, trust_secret_name
from xds_server.xds import snapshot as xds
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder

GATEWAY = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  listen: {{address: 127.0.0.1, port: 10443}}
  tls:
    certificateFile: {cert}
    privateKeyFile: {key}
{client}"""
CLIENT = """\
    clientCertificates:
      trustBundleFile: {bundle}
      trustDomain: example.org
      required: {required}
"""
REST = """\
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: github}
spec:
  endpoints: [{host: 127.0.0.1, port: 18081}]
  policyService: {listFiltering: false}
---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {name: triage}
spec: {identity: {spiffe: "spiffe://example.org/agent/triage"}}
---
apiVersion: agentxds.dev/v1
kind: MCPPolicy
metadata: {name: github}
spec:
  backend: github
  rules: [{agents: [triage], tools: [list_issues]}]
"""


def write_policies(root: Path, *, mtls: bool = True, required: bool = True, pki: Path | None = None) -> Path:
    """A policy dir whose Gateway names a PKI in `pki` (default: root/pki, outside the policy dir)."""
    pki = pki or root / "pki"
    if not (pki / "ca.crt").exists():
        certs.write_dev_pki(pki, trust_domain="example.org", agents=["triage"])
    policies = root / "policies"
    policies.mkdir(exist_ok=True)
    client = CLIENT.format(bundle=pki / "ca.crt", required=str(required).lower()) if mtls else ""
    text = GATEWAY.format(cert=pki / "gateway.crt", key=pki / "gateway.key", client=client) + REST
    (policies / "all.yaml").write_text(text)
    return policies


def tls_context(resources: GatewayResources) -> DownstreamTlsContext:
    [listener] = resources.listeners
    [chain] = listener.filter_chains
    assert chain.transport_socket.name == "envoy.transport_sockets.tls"
    context = DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(context)
    return context


def test_mtls_listener_and_secrets(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    _, resources = compile_policies(policies)
    res = resources["gw"]
    context = tls_context(res)
    common = context.common_tls_context
    assert context.require_client_certificate.value
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]
    [cert_ref] = common.tls_certificate_sds_secret_configs
    assert cert_ref.name == certificate_secret_name("gw") == "gateway/gw/cert"
    assert cert_ref.sds_config.HasField("ads") and cert_ref.sds_config.resource_api_version == 2  # V3
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == trust_secret_name("gw") == "gateway/gw/trust"
    [san] = combined.default_validation_context.match_typed_subject_alt_names
    assert san.san_type == san.URI and san.matcher.prefix == "spiffe://example.org/"

    cert_secret, trust = sorted(res.secrets, key=lambda s: s.name)
    pki = tmp_path / "pki"
    assert cert_secret.tls_certificate.certificate_chain.inline_bytes == (pki / "gateway.crt").read_bytes()
    assert cert_secret.tls_certificate.private_key.inline_bytes == (pki / "gateway.key").read_bytes()
    assert trust.validation_context.trusted_ca.inline_bytes == (pki / "ca.crt").read_bytes()
    assert check_consistent("gw", res) == []
    assert to_snapshot(res).names(xds.SECRET) == ("gateway/gw/cert", "gateway/gw/trust")


def test_tls_without_client_certificates_and_optional_ones(tmp_path: Path) -> None:
    _, plain = compile_policies(write_policies(tmp_path, mtls=False))
    context = tls_context(plain["gw"])
    assert not context.require_client_certificate.value
    assert not context.common_tls_context.HasField("combined_validation_context")
    assert [s.name for s in plain["gw"].secrets] == ["gateway/gw/cert"]

    _, optional = compile_policies(write_policies(tmp_path, required=False))
    context = tls_context(optional["gw"])
    assert not context.require_client_certificate.value
    assert context.common_tls_context.HasField("combined_validation_context")
    # Envoy 1.40 refuses a client with no certificate whenever SANs are matched: RBAC checks the domain.
    assert not context.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names


def test_no_tls_no_secrets(tmp_path: Path) -> None:
    golden = Path(__file__).parent.parent / "golden" / "cases" / "minimal" / "policies"
    _, resources = compile_policies(golden)
    for res in resources.values():
        assert res.secrets == ()
        assert not res.listeners[0].filter_chains[0].HasField("transport_socket")


def test_render_redacts_private_keys(tmp_path: Path) -> None:
    _, resources = compile_policies(write_policies(tmp_path))
    key = (tmp_path / "pki" / "gateway.key").read_bytes()
    text = dump_yaml(xds_document(resources), sort_keys=True)
    assert f"[redacted: {len(key)} bytes, sha256 {hashlib.sha256(key).hexdigest()[:16]}]" in text
    assert "PRIVATE KEY" not in text and key.decode() not in text
    import base64

    assert base64.b64encode(key).decode() not in text
    assert base64.b64encode((tmp_path / "pki" / "gateway.crt").read_bytes()).decode() in text  # certificates are public
    # the published resources keep the real key
    assert resources["gw"].secrets[0].tls_certificate.private_key.inline_bytes == key


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda pki: (pki / "gateway.key").unlink(), "cannot read it"),
        (lambda pki: (pki / "gateway.crt").write_text("not a certificate\n"), "holds no PEM certificate"),
        (lambda pki: (pki / "ca.crt").write_text(""), "is empty"),
        (lambda pki: shutil.copy(pki / "agents" / "triage.key", pki / "gateway.key"), "does not belong to the"),
        (
            lambda pki: (pki / "gateway.key").write_text(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            "is not a PEM private key",
        ),
    ],
)
def test_unusable_files_refuse_the_build_and_keep_the_last_good_snapshot(tmp_path: Path, damage, message: str) -> None:
    policies = write_policies(tmp_path)
    cache, recorder = SnapshotCache(), StatusRecorder()
    pipeline = Pipeline(policies, cache, recorder)
    assert pipeline.reload().ok
    good = cache.get("gw")
    damage(tmp_path / "pki")
    result = pipeline.reload()
    assert not result.ok
    assert any(message in e and "Gateway/gw spec.tls" in e for e in result.errors), result.errors
    assert cache.get("gw") is good
    # the files are still followed although the build was refused
    assert tmp_path / "pki" / "gateway.key" in pipeline.files


def test_rotated_files_change_only_the_secrets(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    _, before = compile_policies(policies)
    certs.write_dev_pki(tmp_path / "pki", trust_domain="example.org")  # new gateway certificate, same CA
    _, after = compile_policies(policies)
    one, two = to_snapshot(before["gw"]), to_snapshot(after["gw"])
    assert {t for t in xds.ORDER if one.type_version(t) != two.type_version(t)} == {xds.SECRET}


def test_verify_reports_dangling_and_duplicate_secrets(tmp_path: Path) -> None:
    _, resources = compile_policies(write_policies(tmp_path))
    res = resources["gw"]
    cert_secret, trust = sorted(res.secrets, key=lambda s: s.name)
    missing = dataclasses.replace(res, secrets=(cert_secret,))
    assert check_consistent("gw", missing) == [
        "gateway gw: listener 'gateway/gw' names unknown secret 'gateway/gw/trust'"
    ]
    doubled = dataclasses.replace(res, secrets=(cert_secret, trust, trust))
    assert check_consistent("gw", doubled) == ["gateway gw: duplicate secret 'gateway/gw/trust'"]


# ---------------------------------------------------------------- what the watcher follows


def test_referenced_files_and_outside_directories(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    ir, _ = compile_policies(policies)
    pki = (tmp_path / "pki").resolve()
    files = referenced_files(ir)
    assert files == {pki / "gateway.crt", pki / "gateway.key", pki / "ca.crt"}
    assert outside_directories(policies, files) == (pki,)

    inside = write_policies(tmp_path / "inside", pki=tmp_path / "inside" / "policies" / "certs")
    ir, _ = compile_policies(inside)
    assert outside_directories(inside, referenced_files(ir)) == ()


@pytest.mark.parametrize(
    ("path", "relevant"),
    [
        ("policies/gateway.yaml", True),
        ("policies/sub/more.yml", True),
        ("policies/.gateway.yaml.swp", False),
        ("policies/notes.txt", False),
        ("policies/certs/new.crt", True),  # key material in the policy dir, named or not (yet)
        ("policies/certs/new.key", True),
        ("pki/gateway.crt", True),  # named by the policies
        ("pki/..data", True),  # any change in a directory holding a named file (symlink swaps, renames)
        ("pki/.gateway.crt.x1.tmp", True),
        ("pki/sub/other.crt", False),  # outside directories are not watched recursively
        ("elsewhere/gateway.yaml", False),
    ],
)
def test_which_changes_trigger_a_rebuild(tmp_path: Path, path: str, relevant: bool) -> None:
    policy_dir, pki = tmp_path / "policies", tmp_path / "pki"
    files = frozenset({pki / "gateway.crt", pki / "gateway.key"})
    assert is_relevant(str(tmp_path / path), policy_dir, files, (pki,)) is relevant


def test_render_redacts_inline_keys_anywhere_and_api_keys(tmp_path: Path) -> None:
    from envoy.config.cluster.v3.cluster_pb2 import Cluster
    from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext

    upstream = UpstreamTlsContext()
    pair = upstream.common_tls_context.tls_certificates.add()
    pair.certificate_chain.inline_string = "-----BEGIN CERTIFICATE-----\npublic\n"
    pair.private_key.inline_string = "-----BEGIN PRIVATE KEY-----\nsecret\n"
    cluster = Cluster(name="mcp/tls", type=Cluster.STATIC)
    cluster.transport_socket.name = "envoy.transport_sockets.tls"
    cluster.transport_socket.typed_config.Pack(upstream)
    cluster.alt_stat_name = "api-key-123"  # stands in for a header matcher's value
    res = GatewayResources((cluster,), (), (), (), (), redact=frozenset({"api-key-123"}))
    text = dump_yaml(xds_document({"gw": res}), sort_keys=True)
    assert "secret" not in text and "api-key-123" not in text
    assert "public" in text
    assert redacted(b"-----BEGIN PRIVATE KEY-----\nsecret\n") in text
    assert redacted(b"api-key-123") in text
    assert text.count("[redacted: ") == 2
