"""A Gateway's sealingKey: read into the IR (redacted when rendered), refused with file and line when short."""

from __future__ import annotations

import shutil
from pathlib import Path

from xds_server.controlplane.pipeline import Pipeline, compile_policies
from xds_server.controlplane.render import ir_document
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder

CASE = Path(__file__).resolve().parents[1] / "golden" / "cases" / "tasks" / "policies"


def _policies(tmp_path: Path) -> Path:
    return Path(shutil.copytree(CASE, tmp_path / "policies"))


def test_the_key_is_in_the_ir_and_never_rendered(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    ir, _ = compile_policies(policies)
    (gateway,) = ir.gateways
    assert (
        gateway.sealing_key is not None and gateway.sealing_key.value == (policies / "sealing.key").read_text().strip()
    )
    assert gateway.sealing_key.value not in str(ir_document(ir))


def test_a_short_key_refuses_the_build_with_file_line_and_field(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    pipeline = Pipeline(policies, SnapshotCache(), StatusRecorder())
    assert pipeline.reload().ok
    (policies / "sealing.key").write_text("too-short\n")
    result = pipeline.reload()
    assert not result.ok
    (error,) = result.errors
    assert "all.yaml:" in error and "Gateway/gw spec.sealingKey.file" in error and "at least 32" in error, error
    assert policies / "sealing.key" in pipeline.files  # followed: fixing it rebuilds


def test_a_binary_key_file_is_a_policy_error_not_a_crash(tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    (policies / "sealing.key").write_bytes(bytes(range(256)))
    result = Pipeline(policies, SnapshotCache(), StatusRecorder()).reload()
    assert not result.ok and result.internal is None
    (error,) = result.errors
    assert "is not UTF-8 text" in error and "spec.sealingKey.file" in error, error
