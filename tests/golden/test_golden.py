"""Policy → IR and IR → xDS goldens, and determinism of both.

Each directory under `cases/` holds `policies/` (the input) and the expected
`ir.yaml` and `xds.yaml`. Two stages are checked:

- policies → `ir.yaml` and `xds.yaml` (the whole pipeline);
- `ir.yaml` → `xds.yaml`: the IR loaded from its YAML alone, with no
  policies and no files, translates to the same xDS (translators are pure
  functions of the IR).

After an intended change to the IR or a translator, regenerate them with
`.venv/bin/pytest tests/golden --update-golden` and review the diff like any
other code change.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

from xds_server.controlplane.pipeline import compile_policies, to_snapshot, translate_checked
from xds_server.controlplane.render import dump_yaml, ir_document, xds_document
from xds_server.ir.load import ir_from_plain
from xds_server.xds import snapshot as xds

CASES_DIR = Path(__file__).parent / "cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "policies").is_dir())
UPDATE_HINT = "if the change is intended, run `.venv/bin/pytest tests/golden --update-golden` and review the diff"


def render(policy_dir: Path) -> tuple[str, str]:
    """(IR YAML, xDS YAML) exactly as `agentxds render --to ir|xds` prints them, except that the
    IR's absolute file paths (certificates, keys) start with `<policies>` instead of this checkout's path."""
    ir, resources = compile_policies(policy_dir)
    ir_text = dump_yaml(ir_document(ir)).replace(str(policy_dir.resolve()), "<policies>")
    return ir_text, dump_yaml(xds_document(resources), sort_keys=True)


def versions(policy_dir: Path) -> dict[str, xds.Snapshot]:
    """Snapshot per gateway, as the pipeline would publish them."""
    _, resources = compile_policies(policy_dir)
    return {gateway: to_snapshot(res) for gateway, res in resources.items()}


def check_golden(path: Path, actual: str, update: bool) -> str | None:
    """Compare `actual` with the golden file at `path` (None if equal, else a message with a
    unified diff); with `update`, rewrite the file instead."""
    if update:
        if not path.exists() or path.read_text() != actual:
            path.write_text(actual)
        return None
    if not path.exists():
        return f"golden file {path} is missing; create it with `.venv/bin/pytest tests/golden --update-golden`"
    expected = path.read_text()
    if expected == actual:
        return None
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{path} (golden)",
            tofile=f"{path} (now)",
        )
    )
    return f"{path.name} differs from the golden file; {UPDATE_HINT}\n{diff}"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, update_golden: bool) -> None:
    ir_text, xds_text = render(CASES_DIR / case / "policies")
    problems = [
        check_golden(CASES_DIR / case / "ir.yaml", ir_text, update_golden),
        check_golden(CASES_DIR / case / "xds.yaml", xds_text, update_golden),
    ]
    if any(problems):
        pytest.fail("\n".join(p for p in problems if p), pytrace=False)


@pytest.mark.parametrize("case", CASES)
def test_xds_from_the_loaded_ir(case: str) -> None:
    """The golden IR, read back from YAML, translates to the golden xDS: the IR is the whole input."""
    ir = ir_from_plain(yaml.safe_load((CASES_DIR / case / "ir.yaml").read_text()))
    xds_text = dump_yaml(xds_document(translate_checked(ir)), sort_keys=True)
    problem = check_golden(CASES_DIR / case / "xds.yaml", xds_text, update=False)
    if problem:
        pytest.fail(f"xDS translated from {case}/ir.yaml alone:\n{problem}", pytrace=False)


def test_a_loaded_ir_renders_as_it_was_read() -> None:
    """ir.yaml → IR → YAML is the identity, so the loader reads every field the renderer writes."""
    for case in CASES:
        text = (CASES_DIR / case / "ir.yaml").read_text()
        assert dump_yaml(ir_document(ir_from_plain(yaml.safe_load(text)))) == text, case


def _copy_renamed(src: Path, dst: Path) -> Path:
    """Copy a policy directory, renaming policy files so they load in reverse order
    (other files, such as certificates the policies name, keep their names)."""
    dst.mkdir()
    files = sorted(f for f in src.iterdir() if f.suffix == ".yaml")
    for index, file in enumerate(reversed(files)):
        shutil.copyfile(file, dst / f"{index:02d}-{file.name}")
    for file in src.iterdir():
        if file.suffix != ".yaml":
            shutil.copyfile(file, dst / file.name)
    return dst


@pytest.mark.parametrize("case", CASES)
def test_output_is_deterministic(case: str, tmp_path: Path) -> None:
    policies = CASES_DIR / case / "policies"
    first = render(policies)
    assert render(policies) == first
    # Neither where the files live nor the order they load in may show in the output.
    assert render(_copy_renamed(policies, tmp_path / "copy")) == first
    assert {g: s.version for g, s in versions(policies).items()} == {
        g: s.version for g, s in versions(policies).items()
    }


def test_version_changes_with_the_policy(tmp_path: Path) -> None:
    policies = shutil.copytree(CASES_DIR / "minimal" / "policies", tmp_path / "policies")
    before = versions(policies)["gw"]
    file = policies / "all.yaml"
    text = file.read_text()
    assert text.count("tools: [echo, add]") == 1
    file.write_text(text.replace("tools: [echo, add]", "tools: [echo, add, multiply]"))
    after = versions(policies)["gw"]
    assert after.version != before.version
    # Only the route configuration (where RBAC lives) changed: nothing else is re-sent.
    changed = {t for t in xds.ORDER if after.type_version(t) != before.type_version(t)}
    assert changed == {xds.ROUTE}


def test_a_rotated_credential_changes_only_the_identify_filter(tmp_path: Path) -> None:
    """An agent's credentials live in the identify filter's configuration alone, which is discovered (ECDS):
    rotating an API key sends that one resource, no listener (Envoy would keep the old one for the
    connections it has until they drain) and no route configuration."""
    policies = shutil.copytree(CASES_DIR / "credentials" / "policies", tmp_path / "policies")
    before = versions(policies)["gw"]
    (policies / "bot.key").write_text("k-rotated-0123456789abcdef\n")
    after = versions(policies)["gw"]
    changed = {t for t in xds.ORDER if after.type_version(t) != before.type_version(t)}
    assert changed == {xds.EXTENSION_CONFIG}


def test_an_added_agent_changes_no_listener(tmp_path: Path) -> None:
    """An agent added (here granted by a rule of every agent) changes the identify filter's configuration and
    the route configurations, never the listener: no connection is drained for it."""
    policies = shutil.copytree(CASES_DIR / "identity" / "policies", tmp_path / "policies")
    before = versions(policies)["gw"]
    agents = policies / "agents.yaml"
    agents.write_text(agents.read_text() + "---\napiVersion: agentxds.dev/v1\nkind: Agent\n"
                      "metadata: {name: newcomer}\nspec:\n  identity: {header: newcomer}\n")  # fmt: skip
    after = versions(policies)["gw"]
    changed = {t for t in xds.ORDER if after.type_version(t) != before.type_version(t)}
    assert changed == {xds.EXTENSION_CONFIG, xds.ROUTE}


def test_a_rotated_jwks_changes_only_the_jwt_filter(tmp_path: Path) -> None:
    """jwt_authn's configuration is discovered (ECDS) too: a JWKS file replaced reaches open connections, and
    no listener is replaced for it."""
    policies = shutil.copytree(CASES_DIR / "identity" / "policies", tmp_path / "policies")
    gateway = policies / "gateway.yaml"
    assert gateway.read_text().count('"kid": "') == 2  # two inline JWKS
    before = versions(policies)["gw"]
    gateway.write_text(gateway.read_text().replace('"kid": "', '"kid": "rotated-', 1))
    after = versions(policies)["gw"]
    changed = {t for t in xds.ORDER if after.type_version(t) != before.type_version(t)}
    assert changed == {xds.EXTENSION_CONFIG}
