"""ECDS over ADS in the pure state machine: HTTP filter configurations, requested by the filter's name.

The identify, ambiguity and jwt_authn filters' configurations are served this way (translate/listener.py
`extension_configs`), so that an edit of an agent's credentials reaches every open connection.
"""

from __future__ import annotations

from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC

from xds_server.xds.ads import EventKind, StreamState, on_request
from xds_server.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    EXTENSION_CONFIG,
    LISTENER,
    ORDER,
    ROUTE,
    SECRET,
    Snapshot,
    resource_name,
    type_url_of,
)

from .xds_fixtures import ack, drain, gateway_snapshot, request, resource_names

IDENTIFY, UNAMBIGUOUS = "agentxds.identity.identify", "agentxds.identity.unambiguous"


def config(name: str, agent: str = "triage") -> TypedExtensionConfig:
    rbac = RBAC(shadow_rules_stat_prefix="agentxds_identify_")
    rbac.shadow_rules.policies[agent].permissions.add().any = True
    rbac.shadow_rules.policies[agent].principals.add().any = True
    found = TypedExtensionConfig(name=name)
    found.typed_config.Pack(rbac)
    return found


def snap(agent: str = "triage", port: int = 10000) -> Snapshot:
    return gateway_snapshot(EXTENSION_CONFIG, [config(IDENTIFY, agent), config(UNAMBIGUOUS)], port)


def names_in(resp) -> list[str]:
    return resource_names(resp, TypedExtensionConfig)


def test_type_and_names() -> None:
    assert type_url_of(TypedExtensionConfig()) == EXTENSION_CONFIG
    assert resource_name(config(IDENTIFY)) == IDENTIFY
    # Like secrets: before the listeners that name them, so a change of both reaches Envoy config first.
    assert ORDER.index(SECRET) < ORDER.index(EXTENSION_CONFIG) < ORDER.index(LISTENER)


def test_only_the_named_configurations_are_sent_and_every_one_of_them() -> None:
    state, _ = on_request(StreamState("s"), request(EXTENSION_CONFIG, names=(IDENTIFY,), node=True))
    state, [resp] = drain(state, snap())
    assert names_in(resp) == [IDENTIFY] and resp.version_info == snap().type_version(EXTENSION_CONFIG)
    state = ack(state, resp, names=(IDENTIFY, UNAMBIGUOUS))  # the listener names one more
    state, [both] = drain(state, snap())
    assert names_in(both) == [IDENTIFY, UNAMBIGUOUS] and both.nonce != resp.nonce


def test_a_name_the_snapshot_lacks_is_left_out() -> None:
    state, _ = on_request(StreamState("s"), request(EXTENSION_CONFIG, names=(IDENTIFY, "no.such.filter"), node=True))
    state, [resp] = drain(state, snap())
    assert names_in(resp) == [IDENTIFY]


def test_a_credential_edit_sends_the_configurations_alone() -> None:
    state = StreamState("s")
    subs = {CLUSTER: (), ENDPOINT: ("a",), EXTENSION_CONFIG: (IDENTIFY, UNAMBIGUOUS), LISTENER: (),
            ROUTE: ("gateway/gw/routes",)}  # fmt: skip
    for type_url, names in subs.items():
        state, _ = on_request(state, request(type_url, names=names, node=True))
    state, sent = drain(state, snap())
    assert [r.type_url for r in sent] == [t for t in ORDER if t in subs]
    for resp in sent:
        state = ack(state, resp, names=subs[resp.type_url])
    state, sent = drain(state, snap(agent="executor"))
    assert [r.type_url for r in sent] == [EXTENSION_CONFIG]
    assert names_in(sent[0]) == [IDENTIFY, UNAMBIGUOUS]


def test_configurations_and_listener_changing_together_go_out_configurations_first() -> None:
    state = StreamState("s")
    for type_url, names in ((LISTENER, ()), (EXTENSION_CONFIG, (IDENTIFY,))):
        state, _ = on_request(state, request(type_url, names=names, node=True))
    state, sent = drain(state, snap())
    for resp in sent:
        state = ack(state, resp, names=(IDENTIFY,) if resp.type_url == EXTENSION_CONFIG else ())
    state, sent = drain(state, snap(agent="executor", port=10001))
    assert [r.type_url for r in sent] == [EXTENSION_CONFIG, LISTENER]


def test_a_nacked_configuration_is_parked_until_it_changes_even_if_the_names_change() -> None:
    state, _ = on_request(StreamState("s"), request(EXTENSION_CONFIG, names=(IDENTIFY,), node=True))
    state, [resp] = drain(state, snap())
    error = "Error adding/updating filter config agentxds.identity.identify"
    state, event = on_request(state, request(EXTENSION_CONFIG, "", resp.nonce, (IDENTIFY,), error=error))
    assert event.kind is EventKind.NACK and event.error == error
    assert drain(state, snap())[1] == []
    state, _ = on_request(state, request(EXTENSION_CONFIG, "", resp.nonce, (IDENTIFY, UNAMBIGUOUS)))
    assert drain(state, snap())[1] == []  # the same rejected version: not sent again
    state, [fixed] = drain(state, snap(agent="executor"))
    assert fixed.version_info == snap(agent="executor").type_version(EXTENSION_CONFIG) != resp.version_info
