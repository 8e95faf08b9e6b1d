"""IR and xDS resources as stable YAML (for `agentxds render` and golden tests)."""

from __future__ import annotations

import base64
from typing import Any

import yaml

from xds_server.controlplane.pipeline import by_type_url
from xds_server.core.secrets import redacted
from xds_server.ir.types import IR, to_plain
from xds_server.translate import GatewayResources
from xds_server.translate.proto import to_dict


def ir_document(ir: IR) -> dict[str, Any]:
    return {"gateways": to_plain(ir.gateways)}


def _inline_data(source: dict[str, Any]) -> bytes | None:
    """The bytes of an inline DataSource in dict form (inline_bytes is base64 there), else None."""
    if "inline_bytes" in source:
        return base64.b64decode(source["inline_bytes"])
    if "inline_string" in source:
        return str(source["inline_string"]).encode()
    return None


def _redact(value: Any, values: frozenset[str]) -> Any:
    """`value` with every inline private key (SDS secrets, TLS contexts) and every string in
    `values` (API keys in header matchers) replaced by `redacted(...)`."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            data = _inline_data(item) if key == "private_key" and isinstance(item, dict) else None
            if data is not None:
                field_name = "inline_bytes" if "inline_bytes" in item else "inline_string"
                out[key] = {field_name: redacted(data)}
            else:
                out[key] = _redact(item, values)
        return out
    if isinstance(value, list):
        return [_redact(item, values) for item in value]
    if isinstance(value, str) and value in values:
        return redacted(value.encode())
    return value


def xds_document(resources: dict[str, GatewayResources]) -> dict[str, Any]:
    """Per gateway (node group), per type URL, the resources Envoy receives, in ADS order.

    Exactly what ADS sends, except secrets: private keys and API keys are shown
    as `[redacted: N bytes, sha256 …]` (the output goes to terminals, CI logs
    and goldens; the digest still tells whether two renders carry the same key).
    """
    out: dict[str, Any] = {}
    for gateway in sorted(resources):
        res = resources[gateway]
        out[gateway] = {t: [_redact(to_dict(m), res.redact) for m in msgs] for t, msgs in by_type_url(res).items()}
    return out


def dump_yaml(document: dict[str, Any], *, sort_keys: bool = False) -> str:
    """Deterministic YAML, no aliases. Protobuf map fields (Struct, typed_per_filter_config)
    have no guaranteed order, so xDS output is dumped with `sort_keys=True`."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(document, Dumper=_NoAliases, sort_keys=sort_keys, width=120, allow_unicode=True)
