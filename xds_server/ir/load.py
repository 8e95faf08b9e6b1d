"""The IR read back from its plain form (`to_plain`, `agentxds render --to ir`, `ir.yaml` goldens).

The translators are pure functions of the IR, so an IR loaded from YAML is
enough to produce Envoy's configuration: the golden stage `ir.yaml → xds.yaml`
runs exactly that, with no policies and no files.

Built from the dataclasses' own type hints: tuples, optionals, enums, nested
dataclasses, and unions of dataclasses told apart by their `kind` (every
member of a union has a `KIND`). Secrets come back with the value as written:
a rendered IR carries redaction markers in their place, which translate (and
render) to the same markers, so xDS rendered from a loaded IR is the xDS
rendered from the policies.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, TypeVar

from xds_server.ir import parts, principals
from xds_server.ir import types as ir_types
from xds_server.ir.types import IR

T = TypeVar("T")


class IRLoadError(ValueError):
    """The plain value is not the IR (a wrong type, an unknown field or kind)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    namespace = {**vars(ir_types), **vars(parts), **vars(principals)}
    module = __import__(cls.__module__, fromlist=["_"])
    return typing.get_type_hints(cls, globalns={**namespace, **vars(module)})


def _union_members(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _convert(tp: Any, value: Any, at: str) -> Any:
    members = _union_members(tp)
    if members is not None:
        if value is None and type(None) in members:
            return None
        classes = [m for m in members if m is not type(None)]
        if len(classes) == 1:
            return _convert(classes[0], value, at)
        if not isinstance(value, dict) or "kind" not in value:
            raise IRLoadError(f"{at}: expected a mapping with a `kind` (one of {_kinds(classes)})")
        chosen = next((c for c in classes if getattr(c, "KIND", None) == value["kind"]), None)
        if chosen is None:
            raise IRLoadError(f"{at}: unknown kind {value['kind']!r} (expected one of {_kinds(classes)})")
        return _convert(chosen, value, at)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise IRLoadError(f"{at}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{at}[{i}]") for i, v in enumerate(value))
        return tuple(_convert(a, v, f"{at}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, at)
    if tp is Any or tp in (str, int, bool, float):
        if tp in (int, float) and isinstance(value, bool):
            raise IRLoadError(f"{at}: expected a number")
        if tp is not Any and not isinstance(value, tp):
            raise IRLoadError(f"{at}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    raise IRLoadError(f"{at}: cannot read a {tp!r}")


def _kinds(classes: list[Any]) -> str:
    return ", ".join(sorted(str(getattr(c, "KIND", c.__name__)) for c in classes))


def _dataclass(cls: type[T], value: Any, at: str) -> T:
    if not isinstance(value, dict):
        raise IRLoadError(f"{at}: expected a mapping for {cls.__name__}")
    hints = _hints(cls)  # type: ignore[arg-type]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kind = getattr(cls, "KIND", None)
    if kind is not None and value.get("kind") != kind:
        raise IRLoadError(f"{at}: kind {value.get('kind')!r} is not {cls.__name__}'s ({kind!r})")
    body = {k: v for k, v in value.items() if not (k == "kind" and kind is not None)}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise IRLoadError(f"{at}: unknown field(s) of {cls.__name__}: {', '.join(unknown)}")
    kwargs = {name: _convert(hints[name], item, f"{at}.{name}") for name, item in body.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise IRLoadError(f"{at}: {exc}") from None


def ir_from_plain(document: Any) -> IR:
    """The IR from `{"gateways": [...]}` as `controlplane.render.ir_document` writes it."""
    if not isinstance(document, dict) or set(document) != {"gateways"}:
        raise IRLoadError("an IR document is a mapping with exactly one key, `gateways`")
    return _dataclass(IR, document, "ir")
