"""SDS over ADS in the pure state machine: secrets are requested by name, like EDS and RDS."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from xds_server.xds.ads import EventKind, StreamState, on_request
from xds_server.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ORDER,
    ROUTE,
    SECRET,
    Snapshot,
    resource_name,
    type_url_of,
)

from .xds_fixtures import ack, drain, gateway_snapshot, request, resource_names


def secret(name: str, pem: bytes = b"cert-1") -> Secret:
    s = Secret(name=name)
    s.tls_certificate.certificate_chain.inline_bytes = pem
    s.tls_certificate.private_key.inline_bytes = b"key-" + pem
    return s


def trust(name: str, pem: bytes = b"ca-1") -> Secret:
    s = Secret(name=name)
    s.validation_context.trusted_ca.inline_bytes = pem
    return s


CERT, BUNDLE = "gateway/gw/cert", "gateway/gw/trust"


def snap(cert: bytes = b"cert-1", ca: bytes = b"ca-1", port: int = 10000) -> Snapshot:
    return gateway_snapshot(SECRET, [secret(CERT, cert), trust(BUNDLE, ca)], port)


def names_in(resp) -> list[str]:
    return resource_names(resp, Secret)


def test_secret_type_and_names():
    assert type_url_of(Secret()) == SECRET
    assert resource_name(secret(CERT)) == CERT
    # dependencies first: secrets before the listeners that name them
    assert ORDER.index(ENDPOINT) < ORDER.index(SECRET) < ORDER.index(LISTENER)


def test_sds_sends_only_the_requested_secrets():
    state, _ = on_request(StreamState("s"), request(SECRET, names=(CERT,), node=True))
    state, [resp] = drain(state, snap())
    assert resp.type_url == SECRET and names_in(resp) == [CERT]
    assert resp.version_info == snap().type_version(SECRET)

    # the listener also asks for its trust bundle: same version, answered again with both (a secret
    # a response left out would be missing to Envoy)
    state = ack(state, resp, names=(CERT, BUNDLE))
    state, [both] = drain(state, snap())
    assert names_in(both) == [CERT, BUNDLE] and both.version_info == resp.version_info and both.nonce != resp.nonce


def test_sds_without_names_sends_nothing():
    state, _ = on_request(StreamState("s"), request(SECRET, node=True))
    state, sent = drain(state, snap())
    assert sent == [] and not state.types[SECRET].dirty


def test_rotation_resends_secrets_only():
    state = StreamState("s")
    subs = {CLUSTER: (), ENDPOINT: ("a",), SECRET: (CERT, BUNDLE), LISTENER: (), ROUTE: ("gateway/gw/routes",)}
    for type_url, names in subs.items():
        state, _ = on_request(state, request(type_url, names=names, node=True))
    state, sent = drain(state, snap())
    assert [r.type_url for r in sent] == [t for t in ORDER if t in subs]  # CDS, EDS, SDS, LDS, RDS
    for resp in sent:
        state = ack(state, resp, names=subs[resp.type_url])

    rotated = snap(cert=b"cert-2")
    assert rotated.type_version(LISTENER) == snap().type_version(LISTENER)
    state, sent = drain(state, rotated)
    assert [r.type_url for r in sent] == [SECRET]
    assert names_in(sent[0]) == [CERT, BUNDLE]  # every named secret, the unchanged one too
    state = ack(state, sent[0], names=(CERT, BUNDLE))
    assert drain(state, rotated)[1] == []


def test_secret_and_listener_changing_together_go_out_secret_first():
    state = StreamState("s")
    for type_url, names in ((LISTENER, ()), (SECRET, (CERT,))):
        state, _ = on_request(state, request(type_url, names=names, node=True))
    state, sent = drain(state, snap())
    for resp in sent:
        state = ack(state, resp, names=(CERT,) if resp.type_url == SECRET else ())
    state, sent = drain(state, snap(cert=b"cert-2", port=10001))
    assert [r.type_url for r in sent] == [SECRET, LISTENER]


def test_nacked_secret_is_parked_until_it_changes():
    state, _ = on_request(StreamState("s"), request(SECRET, names=(CERT,), node=True))
    state, [resp] = drain(state, snap())
    state, event = on_request(state, request(SECRET, "", resp.nonce, (CERT,), error="Failed to load private key"))
    assert event.kind is EventKind.NACK and event.error == "Failed to load private key"
    assert drain(state, snap())[1] == []
    state, [fixed] = drain(state, snap(cert=b"cert-2"))
    assert fixed.version_info == snap(cert=b"cert-2").type_version(SECRET) != resp.version_info
