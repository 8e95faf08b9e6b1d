"""SnapshotCache change waiting, StatusRecorder bookkeeping and the Status proto conversion."""

from __future__ import annotations

import asyncio
import logging
import threading

from xds_server.xds.cache import SnapshotCache
from xds_server.xds.snapshot import CLUSTER, LISTENER
from xds_server.xds.status import StatusRecorder
from xds_server.xds.status_api import to_proto

from .xds_fixtures import snapshot

S1 = snapshot()
S2 = snapshot(clusters=("a",))


async def test_wait_returns_at_once_when_version_differs():
    cache = SnapshotCache()
    cache.set("g", S1)
    assert await cache.wait_for_change("g", None) is S1
    assert await cache.wait_for_change("g", "something-else") is S1


async def test_wait_blocks_until_group_gets_a_new_version():
    cache = SnapshotCache()
    cache.set("g", S1)
    waiter = asyncio.create_task(cache.wait_for_change("g", S1.version))
    other = asyncio.create_task(cache.wait_for_change("empty", None))
    await asyncio.sleep(0)  # let both register
    assert cache.set("g", S1) is False  # same version: nobody is woken
    cache.set("other", S2)  # another group: not ours
    await asyncio.sleep(0)
    assert not waiter.done() and not other.done()
    assert cache.set("g", S2) is True
    assert await waiter is S2
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    assert cache._waiters == {}  # cancelled waiters are removed


async def test_set_from_another_thread_wakes_waiters():
    cache = SnapshotCache()
    waiter = asyncio.create_task(cache.wait_for_change("g", None))
    await asyncio.sleep(0)
    thread = threading.Thread(target=cache.set, args=("g", S1))
    thread.start()
    assert await asyncio.wait_for(waiter, 5) is S1
    thread.join()
    assert cache.groups() == {"g": S1.version}


def test_recorder_tracks_versions_nacks_and_connections(caplog):
    now = [100.0]
    rec = StatusRecorder(nack_history=2, clock=lambda: now[0])
    rec.node_connected("gw-1", "mcp-gateway")
    rec.on_sent("gw-1", CLUSTER, "v1", "n1")
    rec.on_ack("gw-1", CLUSTER, "v1")
    rec.on_sent("gw-1", LISTENER, "l2", "n2")
    with caplog.at_level(logging.DEBUG, logger="xds_server.xds.status"):
        rec.on_nack("gw-1", LISTENER, "l2", "max_request_body_size too large")
        rec.on_nack("gw-1", LISTENER, "l2", "max_request_body_size too large")  # repeated
        rec.on_nack("gw-1", LISTENER, "l3", "other")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"NACK from node 'gw-1' for {LISTENER} version l2: max_request_body_size too large",
        f"NACK from node 'gw-1' for {LISTENER} version l3: other",
    ]

    node = rec.view().node("gw-1")
    assert node.connected and node.connected_since == 100.0 and node.group == "mcp-gateway"
    cds, lds = node.types
    assert (cds.type_url, cds.sent_version, cds.acked_version, cds.last_nack) == (CLUSTER, "v1", "v1", None)
    assert (lds.sent_version, lds.acked_version, lds.last_nack.version) == ("l2", "", "l3")
    assert [n.version for n in node.recent_nacks] == ["l2", "l3"]  # bounded to 2

    rec.node_disconnected("gw-1")
    node = rec.view().node("gw-1")
    assert not node.connected and node.connected_since is None
    assert node.types[1].last_nack.message == "other"  # kept after disconnect


def test_status_proto_merges_cache_and_pipeline_groups():
    rec = StatusRecorder(clock=lambda: 7.5)
    rec.set_policy_errors(["github.yaml:3: spec.backend: unknown backend 'gh'"])
    rec.set_snapshot_version("mcp-gateway", "old")
    rec.set_snapshot_version("only-pipeline", "p1")
    rec.node_connected("gw-1", "mcp-gateway")
    rec.on_nack("gw-1", CLUSTER, "v9", "bad")
    resp = to_proto(rec.view(), {"mcp-gateway": S1.version})

    assert list(resp.policy_errors) == ["github.yaml:3: spec.backend: unknown backend 'gh'"]
    assert [(g.group, g.snapshot_version) for g in resp.groups] == [
        ("mcp-gateway", S1.version),
        ("only-pipeline", "p1"),
    ]
    assert resp.groups[1].updated_time.ToNanoseconds() == 7_500_000_000
    assert not resp.groups[0].HasField("updated_time")  # pipeline's time was for another version
    [node] = resp.nodes
    assert node.connected and node.connected_since.seconds == 7
    assert node.types[0].last_nack.error_message == "bad"
    assert not node.types[0].HasField("acked_time")
    assert [n.version for n in node.recent_nacks] == ["v9"]


def test_status_shows_a_nacked_filter_configuration_as_ecds_in_order():
    from xds_server.cli.status import format_status, status_exit_code
    from xds_server.xds.snapshot import EXTENSION_CONFIG

    rec = StatusRecorder(clock=lambda: 10.0)
    rec.node_connected("gw-1", "mcp-gateway")
    for type_url, version in ((LISTENER, "l1"), (EXTENSION_CONFIG, "e1"), (CLUSTER, "c1")):
        rec.on_sent("gw-1", type_url, version, version)
        rec.on_ack("gw-1", type_url, version)
    rec.on_sent("gw-1", EXTENSION_CONFIG, "e2", "n2")
    rec.on_nack("gw-1", EXTENSION_CONFIG, "e2", "Error adding/updating filter config agentxds.identity.identify")
    status = to_proto(rec.view(), {"mcp-gateway": S1.version})
    lines = format_status(status, now=10.0).splitlines()
    rows = [line.split()[0] for line in lines
            if line.strip().startswith(("CDS ", "ECDS ", "LDS ")) and "last NACK" not in line]  # fmt: skip
    assert rows == ["CDS", "ECDS", "LDS"]  # the order ADS sends them in
    assert any(line.strip().startswith("ECDS") and line.rstrip().endswith("NACKED") for line in lines)
    assert any("ECDS last NACK" in line for line in lines) and status_exit_code(status) == 1
