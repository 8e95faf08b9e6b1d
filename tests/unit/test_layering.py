"""The layers import one way (policy → IR → translate → snapshot → ADS; the policy service reads
the IR), so the architecture cannot silently regress.

Checked on the source (every import statement, also those inside functions)
and on a running interpreter (what importing the policy service or the
translators actually loads).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "xds_server"

#: What each package may import from the others (xds_server.<package>). Everything else is a violation.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "api": set(),
    "demo": set(),
    "runtime": set(),
    "policy": {"core"},
    "sources": {"policy", "core"},
    "ir": {"policy", "core"},
    "translate": {"ir", "core"},
    "xds": {"api", "core"},
    "authz": {"ir", "core"},
    "controlplane": {"sources", "policy", "ir", "translate", "xds", "authz", "core"},
    "cli": {"controlplane", "sources", "policy", "ir", "translate", "xds", "authz", "runtime", "api", "core"},
}


def _absolute(parts: tuple[str, ...], node: ast.ImportFrom) -> str:
    """The absolute module an import-from names (`from ..translate import x` in xds_server/authz/a.py:
    xds_server.translate)."""
    if node.level == 0:
        return node.module or ""
    package = ["xds_server", *(parts if parts[-1] == "__init__" else parts[:-1])]
    if parts[-1] == "__init__":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def test_relative_imports_are_resolved() -> None:
    node = ast.parse("from ..translate import rbac").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _absolute(("authz", "decide"), node) == "xds_server.translate"
    inner = ast.parse("from .cache import SnapshotCache").body[0]
    assert isinstance(inner, ast.ImportFrom)
    assert _absolute(("xds", "server"), inner) == "xds_server.xds.cache"


def _imports() -> dict[str, set[tuple[str, str]]]:
    """package → {(imported package, where)} for every absolute import of another xds_server package."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if len(parts) == 1:
            continue  # xds_server/__init__.py
        package = parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [_absolute(parts, node)]
            for module in modules:
                if module.startswith("xds_server."):
                    target = module.split(".")[1]
                    if target != package:
                        found[package].add((target, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"))
    return found


def test_every_package_has_a_rule() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), "a new package needs its line in ALLOWED (and a place in the layers)"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package: str) -> None:
    wrong = sorted(f"{where} imports xds_server.{target}" for target, where in _imports()[package]
                   if target not in ALLOWED[package])  # fmt: skip
    assert not wrong, f"xds_server.{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(wrong)


def test_no_cycles_between_packages() -> None:
    graph = {package: {target for target, _ in targets} for package, targets in _imports().items()}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join([*path, node])
        visiting.add(node)
        for target in sorted(graph.get(node, ())):
            visit(target, [*path, node])
        visiting.discard(node)
        done.add(node)

    for package in sorted(graph):
        visit(package, [])


@pytest.mark.parametrize(
    "module, never",
    [
        ("xds_server.authz.service", ("xds_server.policy", "xds_server.translate")),  # the service reads the IR only
        ("xds_server.translate", ("xds_server.policy", "xds_server.authz")),  # translators see the IR only
        ("xds_server.ir.load", ("xds_server.policy",)),  # an IR can be read without any policy model
        ("xds_server.xds.server", ("xds_server.policy", "xds_server.translate", "xds_server.ir")),
    ],
)
def test_what_a_layer_loads_at_run_time(module: str, never: tuple[str, ...]) -> None:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    leaked = sorted(m for m in loaded if m.startswith(never))
    assert not leaked, f"importing {module} loads {leaked}"
