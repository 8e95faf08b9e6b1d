"""Edits that take everything away are never published silently.

An emptied policy file, or an edit leaving a gateway without grants, is
refused (the last good snapshot keeps serving) unless the pipeline allows
emptying; then it is published and the loss is kept as a warning. Empty files
and gateways granting nothing are warnings on any build, never refusals.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from xds_server.cli import main
from xds_server.controlplane.pipeline import Pipeline
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder

DEMO = Path(__file__).resolve().parents[2] / "policies" / "demo"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The demo's MCP policies (its A2A agent's grants would keep the gateway from losing every grant)."""
    copied = shutil.copytree(DEMO, tmp_path / "policies")
    (copied / "a2a.yaml").unlink()
    return copied


def _pipeline(policies: Path, *, allow_emptying: bool = False) -> Pipeline:
    pipeline = Pipeline(policies, SnapshotCache(), StatusRecorder(), allow_emptying=allow_emptying)
    first = pipeline.reload()
    assert first.ok and first.warnings == (), first
    return pipeline


def test_an_emptied_file_is_refused_and_the_last_good_snapshot_keeps_serving(policies: Path) -> None:
    pipeline = _pipeline(policies)
    good = pipeline.cache.get("demo")
    (policies / "github-policy.yaml").write_text("# nothing here yet\n")

    result = pipeline.reload()

    assert not result.ok and result.internal is None
    assert result.errors[0] == (
        f"{policies}/github-policy.yaml: this file had 1 policy document(s) and is now empty; every rule in it is gone"
    )
    assert result.errors[1].startswith(f"{policies}/gateway.yaml:2: Gateway/demo: every grant is gone (it had ")
    assert len(result.errors) == 2 and result.errors[-1].endswith(
        "(not published; to publish such edits on purpose, start the control plane with --allow-emptying)"
    )
    assert pipeline.cache.get("demo") is good
    assert pipeline.recorder.view().policy_errors == result.errors


def test_removing_every_grant_without_emptying_a_file_is_refused(policies: Path) -> None:
    pipeline = _pipeline(policies)
    # The file keeps a document (an agent moved into it), but the only MCPPolicy is gone.
    agents = (policies / "agents.yaml").read_text().split("---\n")
    (policies / "agents.yaml").write_text(agents[0])
    (policies / "github-policy.yaml").write_text(agents[1])

    result = pipeline.reload()

    assert not result.ok
    assert any("Gateway/demo: every grant is gone" in e for e in result.errors), result.errors
    assert not any("is now empty" in e for e in result.errors)


def test_with_allow_emptying_the_edit_is_published_and_kept_as_a_warning(policies: Path) -> None:
    pipeline = _pipeline(policies, allow_emptying=True)
    (policies / "github-policy.yaml").write_text("")

    result = pipeline.reload()

    assert result.ok and result.changed == ("demo",)
    warnings = pipeline.recorder.view().policy_warnings
    assert warnings == result.warnings
    assert warnings[0].startswith("published on purpose (--allow-emptying): ")
    assert f"{policies}/github-policy.yaml: this file holds no policy documents" in warnings
    assert f"{policies}/gateway.yaml:2: Gateway/demo: grants nothing: every call will be refused" in warnings


def test_a_first_build_with_an_empty_file_is_published_with_a_warning(policies: Path) -> None:
    (policies / "notes.yaml").write_text("# to be written\n")
    pipeline = Pipeline(policies, SnapshotCache(), StatusRecorder())

    result = pipeline.reload()

    assert result.ok
    assert result.warnings == (f"{policies}/notes.yaml: this file holds no policy documents",)


def test_refilling_a_file_after_a_refusal_publishes(policies: Path) -> None:
    pipeline = _pipeline(policies)
    text = (policies / "github-policy.yaml").read_text()
    (policies / "github-policy.yaml").write_text("")
    assert not pipeline.reload().ok
    (policies / "github-policy.yaml").write_text(text)

    result = pipeline.reload()

    assert result.ok and result.changed == ()  # the same set as before: nothing to push
    assert pipeline.recorder.view().policy_errors == ()


def test_validate_warns_and_succeeds(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (policies / "github-policy.yaml").write_text("")

    code = main(["validate", str(policies)])

    out, err = capsys.readouterr()
    assert code == 0
    assert err.splitlines() == [
        f"warning: {policies}/github-policy.yaml: this file holds no policy documents",
        f"warning: {policies}/gateway.yaml:2: Gateway/demo: grants nothing: every call will be refused",
    ]
    assert out.endswith(f"OK: {policies} is valid (2 warning(s))\n")


def test_a_restart_is_checked_against_what_was_published_before_it(policies: Path, tmp_path: Path) -> None:
    """The last published coverage is kept: an edit made while the control plane was down
    (or that a crash and restart would otherwise swallow) is refused at the first build."""
    kept = tmp_path / "state" / "published.json"
    kept.parent.mkdir()
    first = Pipeline(policies, SnapshotCache(), StatusRecorder(), coverage_file=kept)
    assert first.reload().ok and kept.exists()
    (policies / "github-policy.yaml").write_text("")

    restarted = Pipeline(policies, SnapshotCache(), StatusRecorder(), coverage_file=kept)
    result = restarted.reload()

    assert not result.ok and result.errors[0].endswith("is now empty; every rule in it is gone"), result
    assert restarted.cache.get("demo") is None  # nothing published: Envoys keep what they have
    opted_in = Pipeline(policies, SnapshotCache(), StatusRecorder(), coverage_file=kept, allow_emptying=True)
    assert opted_in.reload().ok
    # What is published now is what the next restart compares with: the empty file is no loss any more.
    assert Pipeline(policies, SnapshotCache(), StatusRecorder(), coverage_file=kept).reload().ok


def test_an_unreadable_record_of_what_was_published_is_ignored(policies: Path, tmp_path: Path) -> None:
    kept = tmp_path / "published.json"
    kept.write_text("{not json")
    pipeline = Pipeline(policies, SnapshotCache(), StatusRecorder(), coverage_file=kept)
    assert pipeline.coverage is None and pipeline.reload().ok
    assert '"github-policy.yaml"' in kept.read_text() or "github-policy.yaml" in kept.read_text()
