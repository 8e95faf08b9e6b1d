"""Errors of the gateway are not errors of the user.

A policy diagnostic refuses the change and is reported as a policy error; an
exception from translating or verifying is a bug: logged with its stack,
recorded and served by the status API as an internal error, never blamed on
the policies, and the last good snapshot keeps serving.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from xds_server.cli.status import format_status, status_exit_code
from xds_server.controlplane import pipeline as pipeline_module
from xds_server.controlplane.service import ControlPlane
from xds_server.xds.status_api import get_status

MINIMAL = Path(__file__).resolve().parents[1] / "golden" / "cases" / "minimal" / "policies"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return shutil.copytree(MINIMAL, tmp_path / "policies")


def _break(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("translator bug: route table exploded")

    monkeypatch.setattr(pipeline_module, stage, broken)


@pytest.mark.parametrize("stage", ["translate", "build_ir"])
async def test_a_gateway_exception_is_an_internal_error_and_the_last_good_snapshot_serves(
    policies: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stage: str
) -> None:
    control = ControlPlane(policies, watch=False)
    await control.start()
    try:
        good = control.cache.get("gw")
        assert good is not None and control.last_reload is not None and control.last_reload.ok

        _break(monkeypatch, stage)
        (policies / "all.yaml").write_text((policies / "all.yaml").read_text().replace("[echo, add]", "[echo]"))
        with caplog.at_level(logging.ERROR, logger="xds_server.controlplane.pipeline"):
            result = control.reload()

        assert not result.ok
        assert result.errors == ()  # nothing is wrong with the policies
        assert result.internal == "RuntimeError: translator bug: route table exploded"
        assert control.cache.get("gw") is good
        assert "internal error while building the configuration" in caplog.text
        assert "Traceback" in caplog.text  # the stack, for whoever fixes the bug

        status = await get_status(control.server.address)
        assert list(status.policy_errors) == []
        (internal,) = status.internal_errors
        assert "RuntimeError: translator bug: route table exploded" in internal and "Traceback" in internal
        text = format_status(status)
        assert "INTERNAL ERROR" in text and "not your policies" in text and "POLICY ERRORS" not in text
        assert status_exit_code(status) == 1

        monkeypatch.undo()
        assert control.reload().ok  # the bug fixed: the same policies publish, the error is gone
        assert list((await get_status(control.server.address)).internal_errors) == []
    finally:
        await control.stop()


def test_a_policy_error_is_not_an_internal_error(policies: Path) -> None:
    control = ControlPlane(policies, watch=False)
    assert control.reload().ok
    (policies / "all.yaml").write_text((policies / "all.yaml").read_text().replace("kind: MCPPolicy", "kind: Nope"))
    result = control.reload()
    assert not result.ok and result.internal is None
    assert any("unknown kind 'Nope'" in e for e in result.errors)
    view = control.recorder.view()
    assert view.policy_errors and not view.internal_errors


def test_reload_never_raises_so_the_watcher_lives_on(policies: Path) -> None:
    class Exploding:
        name = "exploding"

        def load(self) -> object:
            raise KeyError("loader bug")

    control = ControlPlane(Exploding(), watch=False)  # type: ignore[arg-type]
    result = control.reload()
    assert not result.ok and result.internal == "KeyError: 'loader bug'"
    assert control.recorder.view().internal_errors
