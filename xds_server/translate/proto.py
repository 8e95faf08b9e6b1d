"""Build Envoy protobuf messages from plain dicts, and describe them back.

Translators write configuration as dicts shaped like Envoy's documented YAML
(easy to read next to Envoy's docs) and convert them here with `ParseDict`,
which rejects any unknown field at translation time rather than at Envoy.

`typed(type_name, body)` makes an `Any`-style dict and `typed_struct` wraps
a config whose xds-protos message lags Envoy 1.40 (both from core.wire,
re-exported here for the translators).

Large, regular parts (RBAC allow-lists) are built with protobuf's own
constructor instead (`prebuilt`) and placed in a dict body as a `Prebuilt`
Any. Under a translation memo (translate/memo.py), `to_message` hands back
the message it built last time from the same body.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import any_pb2, json_format, message_factory
from google.protobuf.message import Message

from xds_server.core.wire import TYPE_PREFIX, typed, typed_struct
from xds_server.translate import memo

__all__ = ["Prebuilt", "prebuilt", "to_dict", "to_message", "typed", "typed_struct"]

M = TypeVar("M", bound=Message)

# Every message type that appears inside an Any must be in the descriptor pool
# before ParseDict sees its "@type". Importing the modules registers them.
_ANY_MODULES = (
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.connection_limit.v3.connection_limit_pb2",
    "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.config.rbac.v3.rbac_pb2",
    "envoy.type.matcher.v3.http_inputs_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.http.stateful_session.v3.stateful_session_pb2",
    "envoy.extensions.http.stateful_session.envelope.v3.envelope_pb2",
    "envoy.extensions.filters.http.lua.v3.lua_pb2",
    "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.access_loggers.filters.cel.v3.cel_pb2",
    "envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2",
    "envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2",
    "envoy.extensions.common.matching.v3.extension_matcher_pb2",
    "envoy.extensions.filters.http.json_to_metadata.v3.json_to_metadata_pb2",
    "envoy.extensions.filters.common.matcher.action.v3.skip_action_pb2",
    "xds.type.v3.typed_struct_pb2",
)
_loaded = False


def _ensure_descriptors() -> None:
    global _loaded
    if not _loaded:
        for name in _ANY_MODULES:
            importlib.import_module(name)
        _loaded = True


@dataclass(frozen=True, eq=False)
class Prebuilt:
    """An `Any` built beforehand, to stand where a dict would (`{"@type": ..., ...}`) in a body
    given to `to_message`: large, regular parts (RBAC allow-lists) are built with protobuf's
    own constructor, tens of times faster than the dict parser, and shared where they repeat."""

    message: any_pb2.Any


def prebuilt(cls: type[M], body: dict[str, Any]) -> Prebuilt:
    """`body` (proto field names; enums by name; no Any, Duration or Struct inside) as a `cls`,
    packed deterministically into an Any; raises ValueError/TypeError on unknown fields."""
    packed = any_pb2.Any()
    packed.Pack(cls(**body), deterministic=True)
    return Prebuilt(packed)


def to_message(cls: type[M], body: dict[str, Any]) -> M:
    """Parse `body` into a new `cls` with every `Any` in it packed canonically; raises
    `json_format.ParseError` on unknown fields. `Prebuilt` values are put in as they are (they
    may not sit inside another Any's body). Under a translation memo (translate/memo.py), the
    message built last time from the same body is returned (never mutate it)."""
    if memo.current() is None:
        return _to_message(cls, body)
    text, kept = memo.body_key(body)
    return memo.memoised(("message", cls.DESCRIPTOR.full_name, text), kept, lambda: _to_message(cls, body))


def _to_message(cls: type[M], body: dict[str, Any]) -> M:
    _ensure_descriptors()
    found: list[tuple[list[str | int], Prebuilt]] = []
    message = json_format.ParseDict(_stand_ins(body, [], found, inside_any=False), cls())
    canonical_anys(message)
    for path, value in found:
        _at(message, path).CopyFrom(value.message)
    return message


_STAND_IN = {"@type": TYPE_PREFIX + "google.protobuf.Empty"}


def _stand_ins(value: Any, path: list[str | int], found: list[tuple[list[str | int], Prebuilt]],
               *, inside_any: bool) -> Any:  # fmt: skip
    """`value` with each Prebuilt replaced by an empty Any, its path recorded in `found`."""
    if isinstance(value, Prebuilt):
        if inside_any:
            raise ValueError(f"a Prebuilt cannot sit inside another Any's body (at {path})")
        found.append((path, value))
        return _STAND_IN
    if isinstance(value, dict):
        nested = inside_any or "@type" in value
        return {k: _stand_ins(v, [*path, k], found, inside_any=nested) for k, v in value.items()}
    if isinstance(value, list):
        return [_stand_ins(v, [*path, i], found, inside_any=inside_any) for i, v in enumerate(value)]
    return value


def _at(message: Message, path: list[str | int]) -> Any:
    """What `path` (field names, map keys, list indices) leads to inside `message`."""
    at: Any = message
    for step in path:
        at = getattr(at, str(step)) if isinstance(at, Message) else at[step]
    return at


def canonical_anys(message: Message) -> None:
    """Re-pack every `google.protobuf.Any` inside `message` with deterministic serialization.

    `ParseDict` packs an Any's value with the default serialization, whose map
    order (a Struct's fields, typed_per_filter_config) depends on the
    process's hash seed. A snapshot's version is a hash of its bytes, so two
    control planes serving the same policies must produce the same bytes:
    the innermost Anys are re-packed first, then those holding them.
    """
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    canonical_anys(item)
        elif field.is_repeated:
            for item in value:
                canonical_anys(item)
        else:
            canonical_anys(value)
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        pool = message.DESCRIPTOR.file.pool
        inner_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(message.TypeName()))
        inner = inner_cls()
        inner.ParseFromString(message.value)
        canonical_anys(inner)
        message.value = inner.SerializeToString(deterministic=True)


def to_dict(message: Message) -> dict[str, Any]:
    """Describe `message` as a dict (proto field names, Any expanded) for YAML output."""
    _ensure_descriptors()
    plain = json.loads(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)))
    return _whole_floats_to_int(plain)


def _whole_floats_to_int(value: Any) -> Any:
    """Struct numbers are doubles: show 65536.0 as 65536 so YAML reads like what was written."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_floats_to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats_to_int(v) for v in value]
    return value
