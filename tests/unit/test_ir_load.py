"""The IR read back from YAML refuses what is not the IR: a part of a protocol it does not know
is an error, never read as another protocol's part."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xds_server.ir.load import IRLoadError, ir_from_plain

MINIMAL = Path(__file__).resolve().parents[1] / "golden" / "cases" / "minimal" / "ir.yaml"


def _minimal() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(MINIMAL.read_text())


def test_the_golden_ir_loads() -> None:
    ir = ir_from_plain(_minimal())
    assert [r.kind for r in ir.gateways[0].routes] == ["mcp"]


@pytest.mark.parametrize(
    "where, mutate",
    [
        ("protocol", lambda route: route["protocol"].update(kind="llm")),
        ("allows", lambda route: route["grants"][0]["allows"].update(kind="llm")),
        ("principals", lambda route: None),
    ],
)
def test_an_unknown_kind_is_refused(where: str, mutate) -> None:  # type: ignore[no-untyped-def]
    document = _minimal()
    gateway = document["gateways"][0]
    if where == "principals":
        gateway["agents"][0]["principals"][0]["kind"] = "kerberos"
    else:
        mutate(gateway["listener"]["routes"][0])
    with pytest.raises(IRLoadError, match="kind"):
        ir_from_plain(document)


def test_unknown_fields_and_wrong_types_are_refused() -> None:
    document = _minimal()
    document["gateways"][0]["listener"]["routes"][0]["surprise"] = 1
    with pytest.raises(IRLoadError, match="surprise"):
        ir_from_plain(document)
    document = _minimal()
    document["gateways"][0]["listener"]["port"] = "10100"
    with pytest.raises(IRLoadError, match="expected int"):
        ir_from_plain(document)
