"""`render`'s own YAML writer (controlplane/render.py): whatever plain data it writes, YAML reads back as is."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.controlplane.pipeline import compile_policies
from xds_server.controlplane.render import block_yaml, write_xds_yaml, xds_document

SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False) | st.text()
    | st.sampled_from(["yes", "No", "on", "null", "~", "1e3", "0x1F", "- a", "a: b", "#x", "'q'", "\u2028", ""])
)  # fmt: skip
DATA = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=25)  # fmt: skip


@settings(max_examples=300, derandomize=True)
@given(DATA)
def test_what_block_yaml_writes_reads_back_the_same(value: object) -> None:
    assert yaml.safe_load(block_yaml(value)) == value


def test_rendered_xds_reads_back_as_the_document(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    policies = Path(__file__).resolve().parents[1] / "golden" / "cases" / "tasks" / "policies"
    _, resources = compile_policies(policies)
    out: list[str] = []
    write_xds_yaml(resources, out.append)
    assert yaml.safe_load("".join(out)) == xds_document(resources)
