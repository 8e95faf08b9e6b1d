"""Protocols plug into the translators structurally: a route whose protocol has no translator
cannot be built, a translator that leaves out part of its contract cannot exist, and no route
kind has to remember which filters to switch off (filters.RouteFilters decides from each
filter's own declaration)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests import ir_kit
from xds_server.core.wire import typed
from xds_server.translate import translate_gateway
from xds_server.translate.filters import FilterError, HttpFilter, RouteDefault, RouteFilters, Slot, Use, disabled
from xds_server.translate.identity import IDENTIFY_FILTER
from xds_server.translate.listener import listener_filters
from xds_server.translate.protocols import UnknownProtocol, translator_for
from xds_server.translate.protocols.base import ProtocolTranslator
from xds_server.translate.protocols.mcp import McpTranslator
from xds_server.translate.rbac import RBAC_FILTER
from xds_server.translate.route import build_route_configs

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@dataclass(frozen=True)
class A2ARouteIR:
    """A protocol part no translator knows (as A2A's would be before its translator exists)."""

    KIND: ClassVar[str] = "a2a"


def _gateway_with_an_unknown_part() -> Any:
    known = ir_kit.route("github", grants=(ir_kit.grant("triage", ["*"]),))
    unknown = replace(ir_kit.route("agents"), protocol=A2ARouteIR())
    return ir_kit.gateway(routes=(known, unknown))


def test_a_route_of_an_unknown_protocol_cannot_be_built() -> None:
    gw = _gateway_with_an_unknown_part()
    with pytest.raises(UnknownProtocol, match="agents.*A2ARouteIR"):
        translator_for(gw.routes[1])
    with pytest.raises(UnknownProtocol):
        build_route_configs(gw)
    with pytest.raises(UnknownProtocol):
        translate_gateway(gw)


def test_a_translator_that_does_not_declare_its_filters_cannot_exist() -> None:
    class Halfway(ProtocolTranslator):  # everything but http_filters
        kind: ClassVar[str] = "a2a"
        part: ClassVar[type] = A2ARouteIR

        def call_match(self, route: Any) -> dict[str, Any] | None:
            return None

        def response_match(self, route: Any) -> dict[str, Any] | None:
            return None

        def permissions(self, allows: Any) -> list[dict[str, Any]]:
            return []

        def request_rejections(self, gateway: Any) -> list[dict[str, Any]]:
            return []

        def denials(self, caller: Any, known: dict[str, Any]) -> list[dict[str, Any]]:
            return []

        metadata_namespace = "envoy.filters.http.a2a"
        request_id = "%DYNAMIC_METADATA(envoy.filters.http.a2a:id)%"
        access_log_field = "a2a={}"

    with pytest.raises(TypeError, match="http_filters"):
        Halfway()  # type: ignore[abstract]


# ---------------------------------------------------------------- the per-route rule


def _filter(name: str, slot: Slot, *, default: RouteDefault = RouteDefault.LISTENER, owner: str | None = None,
            off: bool = True) -> HttpFilter:  # fmt: skip
    return HttpFilter(name, slot, typed("x.Config"), default, disabled("x.PerRoute") if off else None, owner)


LISTENER = [
    _filter("mcp", Slot.DEFRAME, owner="mcp"),
    _filter("a2a", Slot.DEFRAME, owner="a2a"),
    _filter("rbac", Slot.AUTHZ),
    _filter("ext_authz", Slot.DECISIONS, default=RouteDefault.OFF),
    _filter("router", Slot.TERMINAL, off=False),
]
OFF = disabled("x.PerRoute")


def test_a_route_that_declares_nothing_gets_the_safe_defaults() -> None:
    config = RouteFilters("mcp").config(LISTENER)
    # its own protocol's filter runs (listener config), another protocol's is off, RBAC keeps the
    # listener's allow-nothing, a policy-service filter is off, the router is untouched
    assert config == {"a2a": OFF, "ext_authz": OFF}
    assert RouteFilters("a2a").config(LISTENER) == {"mcp": OFF, "ext_authz": OFF}


def test_declarations_win_and_slots_can_be_named() -> None:
    config = RouteFilters(None, {Slot.DEFRAME: Use.OFF, "rbac": Use.OFF, "ext_authz": {"on": True}}).config(LISTENER)
    assert config == {"mcp": OFF, "a2a": OFF, "rbac": OFF, "ext_authz": {"on": True}}


def test_a_route_cannot_enable_a_filter_the_listener_lacks_or_switch_off_one_that_cannot_be() -> None:
    with pytest.raises(FilterError, match="ext_proc"):
        RouteFilters("mcp", {"ext_proc": {"on": True}}).config(LISTENER)
    with pytest.raises(FilterError, match="router"):
        RouteFilters("mcp", {"router": Use.OFF}).config(LISTENER)
    with pytest.raises(FilterError, match="DECISIONS"):  # one config for filters of different owners
        RouteFilters("mcp", {Slot.DECISIONS: {"on": True}}).config(LISTENER)


def test_the_real_listener_filters_declare_what_routes_need() -> None:
    routes = (
        ir_kit.route("github", grants=(ir_kit.grant("triage", ["*"]),), list_filtering=True),
        ir_kit.route("wiki", grants=(ir_kit.grant("triage", ["*"]),)),
    )
    gw = ir_kit.gateway(routes=routes)
    filters = {f.name: f for f in listener_filters(gw)}
    assert [f.slot for f in listener_filters(gw)] == sorted(f.slot for f in filters.values())
    assert filters["envoy.filters.http.mcp"].owner == McpTranslator.kind
    for name in ("envoy.filters.http.ext_proc", "envoy.filters.http.ext_authz/fail-closed",
                 "envoy.filters.http.ext_authz/fail-open"):  # fmt: skip
        assert filters[name].route_default is RouteDefault.OFF  # on only where a route turns it on
    assert filters["envoy.filters.http.rbac"].route_default is RouteDefault.LISTENER  # which allows nothing


def _walk(node: Any) -> Any:
    """Every dict and list inside `node` (depth first)."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


@pytest.mark.parametrize("case", sorted(p.name for p in (GOLDEN / "cases").iterdir() if (p / "xds.yaml").exists()))
def test_the_identify_filter_runs_before_the_grants_and_on_every_route(case: str) -> None:
    """Grants' RBAC principals are the agent the identify filter named (translate/rbac.py `proven`): it must
    come before the grants' RBAC in every listener, and no route may switch it off (every call would be
    refused there, for no visible reason). Checked on every golden case's xDS."""
    import yaml

    resources = yaml.safe_load((GOLDEN / "cases" / case / "xds.yaml").read_text())
    for gateway in resources.values():
        for listener in gateway.get("type.googleapis.com/envoy.config.listener.v3.Listener", []):
            for chain_filters in (
                n["http_filters"] for n in _walk(listener) if isinstance(n, dict) and "http_filters" in n
            ):
                names = [f["name"] for f in chain_filters]
                # Every golden case has agents it can recognise, hence the filter.
                assert IDENTIFY_FILTER in names and names.index(IDENTIFY_FILTER) < names.index(RBAC_FILTER), (
                    case,
                    names,
                )
        for config in gateway.get("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", []):
            for per_filter in (n["typed_per_filter_config"] for n in _walk(config)
                               if isinstance(n, dict) and "typed_per_filter_config" in n):  # fmt: skip
                assert IDENTIFY_FILTER not in per_filter, (case, config.get("name"))
