"""The outputs shown in the README and docs are what the commands print today.

Each example block is marked in the Markdown with `<!-- example: NAME ... -->`
just before its indented block. Here each NAME reproduces the example (the
same edit on a copy of the shipped policies, the same command) and the block
must be consecutive lines of the real output (where the block elides lines
with `...`, each piece between them is, in order), from its first line to
its last unless the block begins or ends with `...`. A marker without a test, or a test whose
marker is gone, fails too, so examples cannot drift silently.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from xds_server.cli import main
from xds_server.cli.status import format_status
from xds_server.controlplane.pipeline import Pipeline
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.status import StatusRecorder
from xds_server.xds.status_api import to_proto

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- example: ([\w-]+)")


def examples() -> dict[str, tuple[Path, str]]:
    """Every marked block: name -> (file, the block's text without its 4-space indent)."""
    found: dict[str, tuple[Path, str]] = {}
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if not (m := MARKER.match(line)):
                continue
            body = []
            for following in lines[i + 1 :]:
                if following.startswith("    "):
                    body.append(following[4:])
                elif following.strip() or body:
                    break
            assert m.group(1) not in found, f"example {m.group(1)} is marked twice"
            found[m.group(1)] = (doc, "\n".join(body))
    return found


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer contains {old!r}: update the example and this test"
    path.write_text(text.replace(old, new, 1))


def _policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shipped: str, as_: str) -> Path:
    """A copy of a shipped policy set at `as_` under a fresh working directory (paths as in the docs)."""
    target = tmp_path / as_
    shutil.copytree(ROOT / "policies" / shipped, target)
    monkeypatch.chdir(tmp_path)
    return target


def _status_after(policies: Path, edit: Callable[[], None]) -> str:
    pipeline = Pipeline(policies.relative_to(Path.cwd()), SnapshotCache(), StatusRecorder())
    assert pipeline.reload().ok
    edit()
    assert not pipeline.reload().ok
    return format_status(to_proto(pipeline.recorder.view(), pipeline.cache.groups()))


def validate_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    policies = _policies(tmp_path, monkeypatch, "demo", "policies/demo")
    _edit(policies / "agents.yaml", "header: triage", "header: triage\n    spife: x")
    _edit(policies / "github-policy.yaml", "agents: [executor]", "agents: [exectuor]")
    assert main(["validate", "policies/demo"]) == 1
    return "$ agentxds validate policies/demo\n" + capsys.readouterr().err.rstrip("\n")


def status_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    policies = _policies(tmp_path, monkeypatch, "demo", "policies")
    return _status_after(policies, lambda: _edit(policies / "github-policy.yaml", "[triage]", "[triag]"))


def status_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    policies = _policies(tmp_path, monkeypatch, "demo", "policies")
    (policies / "a2a.yaml").unlink()  # the demo's MCP grants alone: emptying their file leaves none
    return _status_after(policies, lambda: (policies / "github-policy.yaml").write_text(""))


def compose_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    policies = _policies(tmp_path, monkeypatch, "compose", "policies")
    shown = _status_after(
        policies, lambda: _edit(policies / "github-policy.yaml", "agents: [triage]", "agent: [triage]")
    )
    return shown.replace("policies/", "/policies/")  # the directory is mounted at /policies in the container


def render_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    _policies(tmp_path, monkeypatch, "demo", "policies/demo")
    assert main(["render", "policies/demo", "--to", "paths"]) == 0
    return "$ agentxds render policies/demo --to paths\n" + capsys.readouterr().out.rstrip("\n")


RUNS = {
    "render-paths": render_paths,
    "validate-errors": validate_errors,
    "status-refused": status_refused,
    "status-emptied": status_emptied,
    "compose-refused": compose_refused,
}


def test_every_marked_example_has_a_run_and_every_run_a_marked_example() -> None:
    assert set(examples()) == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_example_is_what_the_command_prints(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc, shown = examples()[name]
    real = RUNS[name](tmp_path, monkeypatch, capsys).splitlines()
    # The block's lines, cut at "..." lines into pieces: each piece is consecutive lines of the real
    # output, the pieces in order; the first starts the output and the last ends it unless the block
    # begins or ends with "..." (a block that shows less than the whole output says so).
    lines = shown.splitlines()
    assert any(line != "..." for line in lines), f"example {name} shows nothing"
    open_start, open_end = lines[0] == "...", lines[-1] == "..."
    pieces: list[list[str]] = [[]]
    for line in lines:
        if line == "...":
            pieces.append([])
        else:
            pieces[-1].append(line)
    at = 0
    for n, piece in enumerate(p for p in pieces if p):
        found = next((i for i in range(at, len(real) - len(piece) + 1) if real[i : i + len(piece)] == piece), None)
        assert found is not None, (
            f"{doc.name}: example {name} is not what the command prints; it shows\n" + "\n".join(piece)
            + "\nbut the command prints:\n" + "\n".join(real)
        )  # fmt: skip
        assert n > 0 or open_start or found == 0, (
            f"{doc.name}: example {name} does not start where the output does; begin it with '...'"
        )
        at = found + len(piece)
    assert open_end or at == len(real), (
        f"{doc.name}: example {name} stops before the output ends; end it with '...' or show the rest:\n"
        + "\n".join(real[at:])
    )


def test_the_compose_docs_describe_every_rule_of_the_compose_policy() -> None:
    """docs/docker-compose.md says in words what policies/compose grants; each rule must be in them."""
    import yaml

    text = (ROOT / "docs" / "docker-compose.md").read_text()
    summary = text[text.index("The demo\npolicy (`policies/compose/github-policy.yaml`)") :].split("\n\n")[0]
    policy = yaml.safe_load((ROOT / "policies" / "compose" / "github-policy.yaml").read_text())
    for rule in policy["spec"]["rules"]:
        for name in [*rule["agents"], *rule.get("tools", []), *rule.get("resources", []), *rule.get("prompts", [])]:
            shown = "every agent" if name == "*" else f"`{name}`"
            assert shown in summary, f"the compose docs do not mention {name} (rule: {rule['description']})"
        if "quota" in rule:
            assert f"at most {rule['quota']['calls']} times" in summary and "quota" in summary
        if rule.get("requireApproval"):
            assert "approv" in summary
        if "when" in rule:
            assert "condition" in summary and "`acme/`" in summary
