"""The Makefile's commands are the README's first lines: the policy directories they name must load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xds_server.controlplane.pipeline import compile_policies

ROOT = Path(__file__).resolve().parents[2]
RECIPES = re.findall(r"agentxds (?:up --demo|validate) (\S+)", (ROOT / "Makefile").read_text())


def test_the_makefile_names_policy_directories() -> None:
    assert "policies/demo" in RECIPES  # `make up` runs the demo


@pytest.mark.parametrize("directory", RECIPES)
def test_each_policy_directory_the_makefile_uses_compiles(directory: str) -> None:
    ir, _ = compile_policies(ROOT / directory)
    assert ir.gateways
