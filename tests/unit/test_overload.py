"""Envoy's process-wide limits: parsing, machine defaults, and the bootstrap section they give."""

from __future__ import annotations

import pytest

from xds_server.cli import build_parser
from xds_server.runtime import overload
from xds_server.runtime.bootstrap import render_bootstrap
from xds_server.runtime.overload import OverloadLimits, limits_for_this_machine, overload_manager, parse_bytes


@pytest.mark.parametrize(
    ("text", "size"), [("1048576", 1 << 20), ("512MiB", 512 << 20), ("2GiB", 2 << 30), ("64KiB", 64 << 10)]
)
def test_sizes_are_bytes_or_binary_units(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["512MB", "1.5GiB", "-1", "", "GiB", "10 MiB"])
def test_anything_else_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_bytes(text)


def test_limits_below_the_minimums_are_refused() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        OverloadLimits(max_heap_bytes=1 << 20, max_connections=1000)
    with pytest.raises(ValueError, match="below the minimum"):
        OverloadLimits(max_heap_bytes=1 << 30, max_connections=3)


def test_machine_defaults_take_a_quarter_of_memory_and_most_file_descriptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overload, "_memory_limit_bytes", lambda: 8 << 30)
    monkeypatch.setattr(overload.resource, "getrlimit", lambda _which: (1024, 4096))
    assert limits_for_this_machine() == OverloadLimits(max_heap_bytes=2 << 30, max_connections=1024 - 256)


def test_machine_defaults_are_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overload, "_memory_limit_bytes", lambda: 64 << 30)
    monkeypatch.setattr(overload.resource, "getrlimit", lambda _which: (overload.resource.RLIM_INFINITY,) * 2)
    assert limits_for_this_machine() == OverloadLimits(max_heap_bytes=4 << 30, max_connections=50_000)
    monkeypatch.setattr(overload, "_memory_limit_bytes", lambda: 128 << 20)
    monkeypatch.setattr(overload.resource, "getrlimit", lambda _which: (100, 100))
    assert limits_for_this_machine() == OverloadLimits(max_heap_bytes=64 << 20, max_connections=16)


def test_the_section_watches_heap_and_connections_and_sheds_load_in_order() -> None:
    section = overload_manager(OverloadLimits(max_heap_bytes=1 << 30, max_connections=2000))
    monitors = {m["name"]: m["typed_config"] for m in section["resource_monitors"]}
    assert monitors[overload.HEAP_MONITOR]["max_heap_size_bytes"] == str(1 << 30)
    assert monitors[overload.CONNECTIONS_MONITOR]["max_active_downstream_connections"] == "2000"
    thresholds = [(a["name"].rsplit(".", 1)[1], a["triggers"][0]["threshold"]["value"]) for a in section["actions"]]
    assert thresholds == [("shrink_heap", 0.90), ("disable_http_keepalive", 0.95),
                          ("stop_accepting_requests", 0.98), ("reject_incoming_connections", 0.99)]  # fmt: skip


def test_the_bootstrap_carries_the_limits_and_the_admin_api_is_not_counted() -> None:
    limits = OverloadLimits(max_heap_bytes=1 << 30, max_connections=2000)
    bootstrap = render_bootstrap(node_id="n", node_cluster="c", xds_host="127.0.0.1", xds_port=1, admin_port=2,
                                 overload=limits)  # fmt: skip
    assert bootstrap["overload_manager"] == overload_manager(limits)
    assert bootstrap["admin"]["ignore_global_conn_limit"] is True
    assert "overload_manager" not in render_bootstrap(node_id="n", node_cluster="c", xds_host="h", xds_port=1,
                                                      admin_port=2)  # fmt: skip


def test_the_cli_flags_override_the_machine_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["bootstrap", "--gateway", "g", "--max-heap", "256MiB", "--max-connections", "500"]
    )
    assert args.func(args) == 0
    assert '"max_heap_size_bytes": "268435456"' in capsys.readouterr().out
    bad = build_parser().parse_args(["bootstrap", "--gateway", "g", "--max-heap", "lots"])
    with pytest.raises(SystemExit, match="'lots' is not a size"):
        bad.func(bad)
