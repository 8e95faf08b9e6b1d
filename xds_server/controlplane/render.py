"""IR and xDS resources as stable YAML (for `agentxds render` and golden tests)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
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


_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper) if yaml.__with_libyaml__ else yaml.SafeDumper


class _NoAliases(_DUMPER):
    """libyaml's emitter where PyYAML has it (tens of times faster), never an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(document: Any, *, sort_keys: bool = False) -> str:
    """Deterministic YAML, no aliases. Protobuf map fields (Struct, typed_per_filter_config)
    have no guaranteed order, so xDS output is dumped with `sort_keys=True`."""
    return yaml.dump(document, Dumper=_NoAliases, sort_keys=sort_keys, width=120, allow_unicode=True)


def write_xds_yaml(resources: dict[str, GatewayResources], write: Callable[[str], Any]) -> None:
    """`xds_document(resources)` as YAML, written a resource at a time, so `render` on a large policy
    set shows output at once and never holds the whole document (the same data as
    `dump_yaml(xds_document(...), sort_keys=True)`, written by `block_yaml`)."""
    for gateway in sorted(resources):
        res = resources[gateway]
        write(f"{_scalar(gateway)}:\n")
        for type_url, messages in sorted(by_type_url(res).items()):
            if not messages:
                write(f"  {type_url}: []\n")
                continue
            write(f"  {type_url}:\n")
            for message in messages:
                write(block_yaml([_redact(to_dict(message), res.redact)], indent=2))


# ---------------------------------------------------------------- a plain-data YAML writer

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
#: Words YAML 1.1 reads as booleans or null, which must stay strings.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})
#: What a double-quoted YAML scalar cannot hold as it is (it would fold or read differently).
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"  # YAML 1.1 reads a float only with a dot
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(text, text)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


def block_yaml(value: Any, *, indent: int = 0, sort_keys: bool = True) -> str:
    """Plain data (dicts with string keys, lists, strings, numbers, booleans, None) as block-style
    YAML that any YAML parser reads back to the same data; much faster than PyYAML's representer
    for large documents. Strings that could read as something else are double-quoted."""
    out: list[str] = []
    _block(value, indent, out, sort_keys)
    return "".join(out)


def _block(value: Any, indent: int, out: list[str], sort_keys: bool) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            out.append(f"{pad}{{}}\n")
        for key in sorted(value) if sort_keys else value:
            _entry(f"{pad}{_scalar(key)}:", value[key], indent, out, sort_keys, nested=indent + 2)
    elif isinstance(value, list):
        if not value:
            out.append(f"{pad}[]\n")
        for item in value:
            if isinstance(item, dict) and item:
                first = True
                for key in sorted(item) if sort_keys else item:
                    lead = f"{pad}- " if first else f"{pad}  "
                    _entry(f"{lead}{_scalar(key)}:", item[key], indent + 2, out, sort_keys, nested=indent + 4)
                    first = False
            else:
                _entry(f"{pad}-", item, indent, out, sort_keys, nested=indent + 2)
    else:
        out.append(f"{pad}{_scalar(value)}\n")


def _entry(head: str, value: Any, indent: int, out: list[str], sort_keys: bool, *, nested: int) -> None:
    """`head` (a key and colon, or a dash) followed by `value`: inline if it is a scalar or empty."""
    if isinstance(value, dict) and value:
        out.append(head + "\n")
        _block(value, nested, out, sort_keys)
    elif isinstance(value, list) and value:
        out.append(head + "\n")
        # Sequences in a mapping are not indented (as PyYAML writes them); in a sequence they are.
        _block(value, indent if head.endswith(":") else nested, out, sort_keys)
    elif isinstance(value, dict | list):
        out.append(f"{head} {'{}' if isinstance(value, dict) else '[]'}\n")
    else:
        out.append(f"{head} {_scalar(value)}\n")
