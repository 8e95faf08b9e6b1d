"""A Gateway's `policyService.secret`: read into the IR (redacted when rendered), refused with file and line when
unusable, and sent by Envoy with every request to the policy service, never to a backend or a native member."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from xds_server.authz.state import PolicyIndex
from xds_server.controlplane.pipeline import Pipeline, compile_policies
from xds_server.controlplane.render import ir_document
from xds_server.core.wire import POLICY_SERVICE_SECRET_HEADER
from xds_server.translate.policy_service import POLICY_HTTP_CLUSTER
from xds_server.translate.proto import to_dict
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder

CASE = Path(__file__).resolve().parents[1] / "golden" / "cases" / "virtual_mcp" / "policies"
SECRET_FILE = "policy-service.secret"


def _policies(tmp_path: Path) -> Path:
    return Path(shutil.copytree(CASE, tmp_path / "policies"))


def _walk(value: Any) -> Any:
    yield value
    if isinstance(value, dict):
        for child in value.values():
            yield from _walk(child)
    elif isinstance(value, list):
        for child in value:
            yield from _walk(child)


def test_the_secret_is_in_the_ir_and_never_rendered(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    ir, _ = compile_policies(policies)
    (gateway,) = ir.gateways
    secret = (policies / SECRET_FILE).read_text().strip()
    assert gateway.policy_service_secret is not None and gateway.policy_service_secret.value == secret
    assert secret not in json.dumps(ir_document(ir), default=str)
    assert PolicyIndex.from_ir(ir).secrets == {gateway.name: (secret,)}


@pytest.mark.parametrize(
    ("text", "why"),
    [("too-short-0123456789\n", "at least 32"), ("has a percent % sign-0123456789abcdef0123\n", "only letters")],
)
def test_an_unusable_secret_refuses_the_build_with_file_line_and_field(tmp_path: Path, text: str, why: str) -> None:
    policies = _policies(tmp_path)
    pipeline = Pipeline(policies, SnapshotCache(), StatusRecorder())
    assert pipeline.reload().ok
    (policies / SECRET_FILE).write_text(text)
    result = pipeline.reload()
    assert not result.ok
    (error,) = result.errors
    assert "all.yaml:" in error and "Gateway/main spec.policyService.secret.file" in error and why in error, error


def test_envoy_sends_it_to_the_policy_service_only(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    ir, resources = compile_policies(policies)
    secret = (policies / SECRET_FILE).read_text().strip()
    (res,) = resources.values()
    shown = {"key": POLICY_SERVICE_SECRET_HEADER, "value": secret}
    # ext_authz over HTTP: a header Envoy adds to the check; ext_proc: call metadata (the filters' configurations
    # are discovered, ECDS, so that a new secret reaches open connections at once; none is in the listener).
    assert POLICY_SERVICE_SECRET_HEADER not in json.dumps(to_dict(res.listeners[0]))
    listener = [to_dict(c) for c in res.extension_configs]
    checks = [n["authorization_request"]["headers_to_add"] for n in _walk(listener)
              if isinstance(n, dict) and "authorization_request" in n]  # fmt: skip
    assert checks and all(shown in added for added in checks)
    grpc = [n["initial_metadata"] for n in _walk(listener) if isinstance(n, dict) and "envoy_grpc" in n]
    assert grpc and all(metadata == [shown] for metadata in grpc)
    # Routes: every one to the policy service's port (the virtual server's front, discovery) sets it over any
    # client copy; none to a backend or a native member carries it.
    (gateway,) = ir.gateways
    virtual = next(r.name for r in gateway.routes if r.protocol.virtual is not None)  # type: ignore[attr-defined]
    service = {f"mcp/{virtual}", POLICY_HTTP_CLUSTER}
    to_front = to_other = 0
    for config in res.routes:
        for entry in (n for n in _walk(to_dict(config)) if isinstance(n, dict) and "route" in n and "match" in n):
            added = [h["header"] for h in entry.get("request_headers_to_add", [])]
            if entry["route"].get("cluster") in service:
                to_front += 1
                assert shown in added and POLICY_SERVICE_SECRET_HEADER not in entry.get("request_headers_to_remove", [])
            else:
                to_other += 1
                assert all(h["key"] != POLICY_SERVICE_SECRET_HEADER for h in added), entry["name"]
    assert to_front and to_other


def test_while_it_is_replaced_the_previous_secret_is_accepted_but_never_sent(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    old = (policies / SECRET_FILE).read_text().strip()
    (policies / "new.secret").write_text("n" * 40 + "\n")
    text = (policies / "all.yaml").read_text()
    rotating = "policyService: {secret: {file: new.secret}, previousSecret: {file: policy-service.secret}}"
    (policies / "all.yaml").write_text(text.replace("policyService: {secret: {file: policy-service.secret}}", rotating))
    ir, resources = compile_policies(policies)
    index = PolicyIndex.from_ir(ir)
    assert index.admits("main", "n" * 40) and index.admits("main", old) and not index.admits("main", None)
    (res,) = resources.values()
    sent = json.dumps([to_dict(m) for m in (*res.listeners, *res.routes)])
    assert "n" * 40 in sent and old not in sent


def test_a_previous_secret_needs_a_current_one(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    text = (policies / "all.yaml").read_text()
    (policies / "all.yaml").write_text(text.replace("policyService: {secret: {file: policy-service.secret}}",
                                                    "policyService: {previousSecret: {file: policy-service.secret}}"))  # fmt: skip
    result = Pipeline(policies, SnapshotCache(), StatusRecorder()).reload()
    assert not result.ok
    (error,) = result.errors
    assert "all.yaml:" in error and "previousSecret needs a secret" in error, error


def test_the_index_admits_the_secret_alone() -> None:
    index = PolicyIndex(
        secrets={"main": ("s" * 40,), "edge": ("e" * 40,)}, gateways=frozenset({"main", "edge", "open"})
    )
    assert index.admits("main", "s" * 40)
    assert not index.admits("main", None) and not index.admits("main", "s" * 39) and not index.admits("main", "")
    assert not index.admits("main", "e" * 40)  # another gateway's
    assert not index.admits("main", ",".join(["s" * 40] * 2))  # a repeated header is joined: no match
    assert index.admits("open", None)  # a gateway without a secret
    # No gateway this service knows (an unknown route, a removed gateway): some gateway's secret, then refused
    # on its own grounds; without one it cannot learn which routes exist.
    for unknown in (None, "gone"):
        assert not index.admits(unknown, None) and not index.admits(unknown, "x" * 40)
        assert index.admits(unknown, "s" * 40) and index.admits(unknown, "e" * 40)


def test_without_any_secret_every_request_is_served_on_its_own_grounds() -> None:
    index = PolicyIndex(gateways=frozenset({"open"}))
    assert index.admits("open", None) and index.admits(None, None) and index.admits("gone", None)
