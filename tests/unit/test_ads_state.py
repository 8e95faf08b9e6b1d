"""Table tests of the pure SotW ADS state machine (xds_server.xds.ads)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2

from xds_server.xds.ads import (
    EventKind,
    StreamState,
    TypeState,
    next_response,
    on_request,
)
from xds_server.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, Snapshot

from .xds_fixtures import GROUP, NODE_ID, ack, cla, cluster, drain, request, route, snapshot


def fresh() -> StreamState:
    return StreamState(stream_id="s")


def unpack(resp, cls):
    out = []
    for any_msg in resp.resources:
        msg = cls()
        assert any_msg.Unpack(msg)
        out.append(msg)
    return out


# -- on_request: classification table ------------------------------------------------

IN_FLIGHT = TypeState(names=frozenset(), nonce="s-1", in_flight=True, sent_version="v1", dirty=False)
ANSWERED = replace(IN_FLIGHT, in_flight=False, acked_version="v1")


@pytest.mark.parametrize(
    ("before", "req", "kind", "after"),
    [
        # first request for a type: subscription, must be answered
        (None, request(CLUSTER, node=True), EventKind.SUBSCRIBE, TypeState(dirty=True)),
        # a nonce from another stream (reconnect) means nothing here
        (None, request(CLUSTER, "old", "x-9"), EventKind.SUBSCRIBE, TypeState(dirty=True)),
        # ACK: latest nonce, no error -> acked version recorded, nothing pending
        (IN_FLIGHT, request(CLUSTER, "v1", "s-1"), EventKind.ACK, ANSWERED),
        # NACK: latest nonce with error_detail -> rejected version parked
        (
            IN_FLIGHT,
            request(CLUSTER, "", "s-1", error="bad"),
            EventKind.NACK,
            replace(IN_FLIGHT, in_flight=False, rejected_version="v1"),
        ),
        # stale nonce: ignored, even with an error (it refers to an old response)
        (IN_FLIGHT, request(CLUSTER, "v0", "s-0"), EventKind.STALE, IN_FLIGHT),
        (IN_FLIGHT, request(CLUSTER, "v0", "s-0", error="old"), EventKind.STALE, IN_FLIGHT),
        # latest nonce again after ACK with new names: answer again
        (
            ANSWERED,
            request(CLUSTER, "v1", "s-1", names=("x",)),
            EventKind.REQUEST,
            replace(ANSWERED, names=frozenset({"x"}), dirty=True),
        ),
        # latest nonce again, nothing changed: nothing to do
        (ANSWERED, request(CLUSTER, "v1", "s-1"), EventKind.REQUEST, ANSWERED),
        # a request without nonce restarts the type
        (IN_FLIGHT, request(CLUSTER), EventKind.SUBSCRIBE, replace(IN_FLIGHT, in_flight=False, dirty=True)),
    ],
)
def test_on_request_classification(before, req, kind, after):
    state = fresh() if before is None else StreamState("s", types={CLUSTER: before})
    new, event = on_request(state, req)
    assert event.kind is kind
    assert event.type_url == CLUSTER
    assert new.types[CLUSTER] == after
    if kind is EventKind.STALE:
        assert new is state  # ignored entirely
    if kind is EventKind.NACK:
        assert (event.version, event.error) == ("v1", "bad")
    if kind is EventKind.ACK:
        assert event.version == "v1"


# -- next_response: decision table ---------------------------------------------------

SNAP = snapshot()
V = SNAP.type_version(CLUSTER)
VE = SNAP.type_version(ENDPOINT)


@pytest.mark.parametrize(
    ("type_url", "ts", "sends"),
    [
        (CLUSTER, TypeState(), True),  # new subscription
        (CLUSTER, TypeState(in_flight=True, sent_version="old", dirty=False), False),  # awaiting ACK
        (CLUSTER, TypeState(sent_version=V, acked_version=V, dirty=False), False),  # has it already
        (CLUSTER, TypeState(sent_version="old", acked_version="old", dirty=False), True),  # new version
        (CLUSTER, TypeState(sent_version=V, rejected_version=V, dirty=False), False),  # NACKed: parked
        (CLUSTER, TypeState(sent_version=V, rejected_version=V, dirty=True), False),  # parked despite request
        (CLUSTER, TypeState(sent_version="old", rejected_version="old", dirty=False), True),  # changed since NACK
        (ENDPOINT, TypeState(names=frozenset({"a"})), True),
        (ENDPOINT, TypeState(names=frozenset()), False),  # nothing named
        (ENDPOINT, TypeState(names=frozenset({"a", "b"}), sent_version=VE, dirty=True), True),  # names changed
        ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", TypeState(), False),  # not served
    ],
)
def test_next_response_decision(type_url, ts, sends):
    state = StreamState("s", types={type_url: ts})
    new, resp = next_response(state, SNAP)
    assert (resp is not None) is sends
    if sends:
        assert resp.type_url == type_url
        assert resp.version_info == SNAP.type_version(type_url)
        assert new.types[type_url].in_flight and new.types[type_url].nonce == resp.nonce


def test_no_snapshot_means_wait():
    state, _ = on_request(fresh(), request(CLUSTER, node=True))
    assert next_response(state, None) == (state, None)


# -- scenarios -----------------------------------------------------------------------


def test_first_request_gets_every_cluster_then_ack_sends_nothing():
    state, event = on_request(fresh(), request(CLUSTER, node=True))
    assert event.kind is EventKind.SUBSCRIBE
    assert (state.node_id, state.group) == (NODE_ID, GROUP)

    state, [resp] = drain(state, SNAP)
    assert resp.version_info == SNAP.type_version(CLUSTER)
    assert [c.name for c in unpack(resp, cluster_pb2.Cluster)] == ["a", "b"]
    assert resp.control_plane.identifier == "agentxds"

    state = ack(state, resp)
    assert state.types[CLUSTER].acked_version == resp.version_info
    assert drain(state, SNAP)[1] == []
    # node is remembered although later requests do not carry it
    assert (state.node_id, state.group) == (NODE_ID, GROUP)


def test_node_from_first_message_only_is_kept():
    state, _ = on_request(fresh(), request(CLUSTER, node=True))
    state, _ = on_request(state, request(LISTENER, node=True, node_id="other", group="other"))
    assert (state.node_id, state.group) == (NODE_ID, GROUP)


def test_nack_is_recorded_and_version_not_resent_until_it_changes():
    state, _ = on_request(fresh(), request(CLUSTER, node=True))
    state, [sent] = drain(state, SNAP)
    state, event = on_request(state, request(CLUSTER, "", sent.nonce, error="Proto constraint validation failed"))
    assert event.kind is EventKind.NACK
    assert event.version == sent.version_info
    assert event.error == "Proto constraint validation failed"
    assert state.types[CLUSTER].rejected_version == sent.version_info
    assert state.types[CLUSTER].acked_version is None

    # same snapshot (or one whose clusters did not change): nothing sent, no loop
    assert drain(state, SNAP)[1] == []
    assert drain(state, snapshot(listener_port=1))[1] == []

    fixed = snapshot(clusters=("a",))
    state, [resent] = drain(state, fixed)
    assert resent.version_info == fixed.type_version(CLUSTER) != sent.version_info
    assert resent.nonce != sent.nonce
    state = ack(state, resent)
    assert state.types[CLUSTER].acked_version == resent.version_info


def test_stale_nack_does_not_park():
    state, _ = on_request(fresh(), request(CLUSTER, node=True))
    state, [first] = drain(state, SNAP)
    state = ack(state, first)
    newer = snapshot(clusters=("a", "b", "c"))
    state, [second] = drain(state, newer)
    state, event = on_request(state, request(CLUSTER, first.version_info, first.nonce, error="late"))
    assert event.kind is EventKind.STALE
    assert state.types[CLUSTER].rejected_version is None
    assert state.types[CLUSTER].in_flight  # still waiting for the answer to `second`
    state = ack(state, second)
    assert state.types[CLUSTER].acked_version == second.version_info


def test_eds_and_rds_send_only_requested_names():
    state, _ = on_request(fresh(), request(ENDPOINT, names=("a",), node=True))
    state, _ = on_request(state, request(ROUTE, names=("r2", "missing")))
    state, (eds, rds) = drain(state, SNAP)
    assert [a.cluster_name for a in unpack(eds, endpoint_pb2.ClusterLoadAssignment)] == ["a"]
    assert [r.name for r in unpack(rds, route_pb2.RouteConfiguration)] == ["r2"]

    # CDS added cluster b: Envoy ACKs with the larger name set -> answered again, same version,
    # with what it does not have yet (it keeps "a")
    state = ack(state, rds, names=("r2", "missing"))
    state = ack(state, eds, names=("a", "b"))
    state, [eds2] = drain(state, SNAP)
    assert eds2.version_info == eds.version_info and eds2.nonce != eds.nonce
    assert [a.cluster_name for a in unpack(eds2, endpoint_pb2.ClusterLoadAssignment)] == ["b"]


def test_a_changed_snapshot_sends_only_the_named_resources_that_changed():
    state, _ = on_request(fresh(), request(ROUTE, names=("r1", "r2"), node=True))
    state, [rds] = drain(state, SNAP)
    assert [r.name for r in unpack(rds, route_pb2.RouteConfiguration)] == ["r1", "r2"]
    state = ack(state, rds, names=("r1", "r2"))
    changed = Snapshot.build({**SNAP.resources, ROUTE: [route("r1"), route("r2", prefix="/other")]})
    state, [rds2] = drain(state, changed)
    assert rds2.version_info == changed.type_version(ROUTE) != rds.version_info
    assert [r.name for r in unpack(rds2, route_pb2.RouteConfiguration)] == ["r2"]
    state = ack(state, rds2, names=("r1", "r2"))
    # Only an unrequested resource changed: the new version still goes out (to be acknowledged), empty.
    unrequested = Snapshot.build({**changed.resources, ROUTE: [*changed.resources[ROUTE], route("r3")]})
    state, [rds3] = drain(state, unrequested)
    assert rds3.version_info == unrequested.type_version(ROUTE) and len(rds3.resources) == 0
    # A name dropped and asked for again is sent again.
    state = ack(state, rds3, names=("r1",))
    state, _ = on_request(state, request(ROUTE, rds3.version_info, rds3.nonce, names=("r1", "r2")))
    state, [again] = drain(state, unrequested)
    assert [r.name for r in unpack(again, route_pb2.RouteConfiguration)] == ["r2"]


def test_cds_and_lds_ignore_resource_names():
    state, _ = on_request(fresh(), request(CLUSTER, names=("a",), node=True))
    _, [resp] = drain(state, SNAP)
    assert len(resp.resources) == 2


def test_all_pending_types_go_out_in_cds_eds_lds_rds_order():
    state = fresh()
    # subscribe in the "wrong" order: the response order must not depend on it
    for type_url, names in ((ROUTE, ("r1",)), (LISTENER, ()), (ENDPOINT, ("a",)), (CLUSTER, ())):
        state, _ = on_request(state, request(type_url, names=names, node=True))
    state, sent = drain(state, SNAP)
    subscribed = [t for t in ORDER if t in (ROUTE, LISTENER, ENDPOINT, CLUSTER)]  # SDS: see test_ads_secrets.py
    assert [r.type_url for r in sent] == subscribed
    assert len({r.nonce for r in sent}) == 4

    for resp in sent:
        state = ack(
            state, resp, names=("r1",) if resp.type_url == ROUTE else ("a",) if resp.type_url == ENDPOINT else ()
        )
    changed = Snapshot.build(
        {
            CLUSTER: [cluster("a", timeout_s=5)],
            ENDPOINT: [cla("a", 9)],
            LISTENER: [],
            ROUTE: [],
        }
    )
    state, sent = drain(state, changed)
    assert [r.type_url for r in sent] == subscribed
    assert [len(r.resources) for r in sent] == [1, 1, 0, 0]  # an emptied type is sent empty


def test_unchanged_type_is_not_resent():
    state = fresh()
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("a", "b")), (LISTENER, ())):
        state, _ = on_request(state, request(type_url, names=names, node=True))
    state, sent = drain(state, SNAP)
    for resp in sent:
        state = ack(state, resp, names=("a", "b") if resp.type_url == ENDPOINT else ())

    only_listeners_changed = snapshot(listener_port=10001)
    assert only_listeners_changed.version != SNAP.version
    assert only_listeners_changed.type_version(CLUSTER) == SNAP.type_version(CLUSTER)
    state, sent = drain(state, only_listeners_changed)
    assert [r.type_url for r in sent] == [LISTENER]


def test_nonces_are_fresh():
    state, _ = on_request(fresh(), request(CLUSTER, node=True))
    nonces = []
    for port in range(5):
        state, [resp] = drain(state, snapshot(clusters=(f"c{port}",)))
        nonces.append(resp.nonce)
        state = ack(state, resp)
    assert len(set(nonces)) == 5


# -- snapshot --------------------------------------------------------------------------


def test_snapshot_version_is_a_content_hash():
    one = Snapshot.build({CLUSTER: [cluster("b"), cluster("a")]})
    two = Snapshot.build({CLUSTER: [cluster("a"), cluster("b")]})
    assert one.version == two.version and len(one.version) == 16
    assert [c.name for c in one.resources[CLUSTER]] == ["a", "b"]
    assert set(one.resources) >= set(ORDER)  # every type present, possibly empty
    assert Snapshot.build({CLUSTER: [cluster("a", 2), cluster("b")]}).version != one.version


@pytest.mark.parametrize(
    "resources",
    [
        {CLUSTER: [cluster("a"), cluster("a")]},  # duplicate name
        {LISTENER: [cluster("a")]},  # wrong type
        {CLUSTER: [cluster("")]},  # no name
    ],
)
def test_snapshot_rejects_what_envoy_would_reject(resources):
    with pytest.raises(ValueError):
        Snapshot.build(resources)


def test_a_nacked_partial_response_counts_as_not_received():
    state, _ = on_request(fresh(), request(ROUTE, names=("r1", "r2"), node=True))
    state, [rds] = drain(state, SNAP)
    state = ack(state, rds, names=("r1", "r2"))
    both_changed = Snapshot.build({**SNAP.resources, ROUTE: [route("r1", prefix="/bad"), route("r2", prefix="/new")]})
    state, [bad] = drain(state, both_changed)
    assert [r.name for r in unpack(bad, route_pb2.RouteConfiguration)] == ["r1", "r2"]
    state, event = on_request(state, request(ROUTE, rds.version_info, bad.nonce, names=("r1", "r2"), error="no"))
    assert event.kind is EventKind.NACK
    # r1 is fixed, r2 unchanged since the refused response: Envoy may never have applied r2, so both go.
    fixed = Snapshot.build({**SNAP.resources, ROUTE: [route("r1", prefix="/fixed"), route("r2", prefix="/new")]})
    state, [again] = drain(state, fixed)
    assert [r.name for r in unpack(again, route_pb2.RouteConfiguration)] == ["r1", "r2"]


def test_a_changed_cluster_gets_its_endpoints_again_even_when_they_did_not_change():
    state, _ = on_request(fresh(), request(CLUSTER, node=True))
    state, _ = on_request(state, request(ENDPOINT, names=("a", "b")))
    state, (cds, eds) = drain(state, SNAP)
    state = ack(ack(state, cds), eds, names=("a", "b"))
    # Cluster a changes (its timeout), its load assignment does not: Envoy warms the new cluster
    # until it gets endpoints for it, so they are sent again after the cluster.
    changed = Snapshot.build({**SNAP.resources, CLUSTER: [cluster("a", timeout_s=5), cluster("b")]})
    assert changed.type_version(ENDPOINT) == SNAP.type_version(ENDPOINT)
    state, sent = drain(state, changed)
    assert [r.type_url for r in sent] == [CLUSTER, ENDPOINT]  # the cluster first, then its endpoints
    assert sent[1].version_info == eds.version_info
    assert [a.cluster_name for a in unpack(sent[1], endpoint_pb2.ClusterLoadAssignment)] == ["a"]
