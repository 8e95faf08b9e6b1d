"""IR and xDS resources as stable YAML (for `agentxds render` and golden tests)."""

from __future__ import annotations

from typing import Any

import yaml

from xds_server.ir.types import IR, to_plain
from xds_server.translate import GatewayResources
from xds_server.translate.proto import to_dict
from xds_server.xds import snapshot as xds


def ir_document(ir: IR) -> dict[str, Any]:
    return {"gateways": to_plain(ir.gateways)}


def xds_document(resources: dict[str, GatewayResources]) -> dict[str, Any]:
    """Per gateway (node group), per type URL, the resources Envoy receives, in ADS order."""
    out: dict[str, Any] = {}
    for gateway in sorted(resources):
        res = resources[gateway]
        by_type = {
            xds.CLUSTER: res.clusters,
            xds.ENDPOINT: res.endpoints,
            xds.LISTENER: res.listeners,
            xds.ROUTE: res.routes,
        }
        out[gateway] = {t: [to_dict(m) for m in by_type[t]] for t in xds.ORDER}
    return out


def dump_yaml(document: dict[str, Any], *, sort_keys: bool = False) -> str:
    """Deterministic YAML, no aliases. Protobuf map fields (Struct, typed_per_filter_config)
    have no guaranteed order, so xDS output is dumped with `sort_keys=True`."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(document, Dumper=_NoAliases, sort_keys=sort_keys, width=120, allow_unicode=True)
