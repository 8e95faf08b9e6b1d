"""The real Envoy 1.40 binary accepts what the translators produce (`--mode validate`).

Goldens pin the output; this checks that the pinned output is valid Envoy
configuration, filters, typed configs and matchers included.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.golden.static_bootstrap import static_bootstrap
from tests.golden.test_golden import CASES, CASES_DIR
from xds_server.controlplane.pipeline import compile_policies
from xds_server.runtime.envoy import find_envoy_binary


@pytest.mark.parametrize("case", CASES)
def test_envoy_accepts(case: str, tmp_path: Path) -> None:
    _, resources = compile_policies(CASES_DIR / case / "policies")
    assert resources, f"case {case} has no gateway"
    for gateway, res in sorted(resources.items()):
        # JSON, not YAML: Envoy's YAML 1.1 reader would turn some bare words into booleans.
        config = tmp_path / f"{gateway}.json"
        config.write_text(json.dumps(static_bootstrap(res), indent=2))
        result = subprocess.run(
            [find_envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (
            f"Envoy rejected gateway {gateway!r} of case {case!r} ({config}), exit {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
