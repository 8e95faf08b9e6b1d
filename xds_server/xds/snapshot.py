"""Immutable, content-addressed sets of Envoy resources served over ADS.

A `Snapshot` is everything one node group receives: per xDS type URL, every
resource of that type, sorted by resource name. Versions are content hashes:

* `Snapshot.version` covers every resource of every type, so the same
  resources always give the same version and any change gives a new one.
* `Snapshot.type_version(type_url)` covers one type only. ADS sends it as
  `version_info`, so a type whose resources did not change is not re-sent when
  another type changes.

Hashes use `SerializeToString(deterministic=True)` (map fields sorted), so they
are stable across processes and runs. Each resource is serialised once, when
the snapshot is built: the same bytes give the versions and, packed into
`Any`s (`packed`), every ADS response of every stream that sends it.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
SCOPED_ROUTE = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION_CONFIG = _PREFIX + "envoy.config.core.v3.TypedExtensionConfig"

#: The order in which types are hashed and sent: a cluster exists before its
#: endpoints, a listener before the route configuration it names. Envoy warms
#: resources in this order (make-before-break), see the xDS protocol docs.
#: Secrets (SDS) are what listeners (and TLS clusters) depend on, like EDS for
#: clusters: when a secret and a listener change together, the secret goes
#: first, so the new listener warms with the new secret at once. Envoy asks
#: for secrets by name only once a listener or cluster names them, so the
#: very first secret response follows LDS anyway. Extension configurations (ECDS:
#: an HTTP filter's configuration the listener names) likewise: requested once a
#: listener names them, and sent ahead of a listener changed with them when
#: Envoy already asks for them (a name a new listener brings is asked for, and
#: answered, while that listener warms). A
#: listener's scopes (SRDS: which route configuration serves which path) come
#: before the route configurations.
ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, SECRET, EXTENSION_CONFIG, LISTENER, SCOPED_ROUTE, ROUTE)

#: Types Envoy subscribes to as a whole ("wildcard"); every other type is
#: requested by resource name (EDS by cluster name, RDS by route config name,
#: SDS by secret name, ECDS by filter name). State of the world: a response of a wildcard type
#: carries every resource; of another type, any of the named ones (Envoy
#: keeps the others), so only those that changed are sent.
WILDCARD_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER, SCOPED_ROUTE})

#: Length of the hex versions. 64 bits is ample to tell snapshots apart.
VERSION_LENGTH = 16


def type_url_of(msg: Message) -> str:
    """The xDS type URL of a message, e.g. `CLUSTER` for a Cluster."""
    return _PREFIX + msg.DESCRIPTOR.full_name


def resource_name(msg: Message) -> str:
    """The xDS resource name: `cluster_name` for ClusterLoadAssignment, else `name`.

    Raises ValueError for a message type that has neither field.
    """
    if type_url_of(msg) == ENDPOINT:
        return msg.cluster_name
    if "name" in msg.DESCRIPTOR.fields_by_name:
        return msg.name
    raise ValueError(f"{msg.DESCRIPTOR.full_name} has no resource name field")


def _sorted_types(type_urls: Iterable[str]) -> list[str]:
    """ORDER first, then any other type URL alphabetically."""
    extra = sorted(set(type_urls) - set(ORDER))
    return [*ORDER, *extra]


def _digest(type_url: str, serialized: tuple[bytes, ...], into: hashlib._Hash) -> None:
    # Length prefixes keep the encoding unambiguous: no concatenation of two
    # different resource lists can produce the same byte stream.
    def put(data: bytes) -> None:
        into.update(len(data).to_bytes(8, "big"))
        into.update(data)

    put(type_url.encode())
    put(len(serialized).to_bytes(8, "big"))
    for data in serialized:
        put(data)


@dataclass(frozen=True)
class Snapshot:
    """A complete, immutable set of resources for one node group.

    `resources` maps each type URL to its messages sorted by resource name;
    every type in ORDER is present (possibly empty) so that Envoy gets an
    explicit, empty answer rather than silence. Build it with `Snapshot.build`;
    callers must not mutate the messages afterwards (they are hashed once).
    """

    version: str
    resources: Mapping[str, tuple[Message, ...]]
    type_versions: Mapping[str, str] = field(default_factory=dict)
    #: Per type, each resource packed in an Any (its bytes serialised once), in `resources` order.
    anys: Mapping[str, tuple[any_pb2.Any, ...]] = field(default_factory=dict, repr=False, compare=False)
    #: Per type, resource name → a hash of that resource alone (what changed, resource by resource).
    resource_versions: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, resources: Mapping[str, Iterable[Message]]) -> Snapshot:
        """Sort, validate and hash `resources` (type URL -> messages).

        Raises ValueError when a message does not match its type URL, has an
        empty name, or two resources of one type share a name: Envoy would
        reject such a response, so it must never be published.
        """
        by_type: dict[str, tuple[Message, ...]] = {}
        for type_url in _sorted_types(resources):
            listed = list(resources.get(type_url, ()))
            named: dict[str, Message] = {}
            for msg in listed:
                if type_url_of(msg) != type_url:
                    raise ValueError(f"{type_url_of(msg)} listed under {type_url}")
                name = resource_name(msg)
                if not name:
                    raise ValueError(f"{type_url}: resource without a name")
                if name in named:
                    raise ValueError(f"{type_url}: duplicate resource name {name!r}")
                named[name] = msg
            by_type[type_url] = tuple(named[n] for n in sorted(named))

        overall = hashlib.sha256()
        type_versions: dict[str, str] = {}
        anys: dict[str, tuple[any_pb2.Any, ...]] = {}
        resource_versions: dict[str, Mapping[str, str]] = {}
        for type_url, msgs in by_type.items():
            serialized = tuple(m.SerializeToString(deterministic=True) for m in msgs)
            one = hashlib.sha256()
            _digest(type_url, serialized, one)
            _digest(type_url, serialized, overall)
            type_versions[type_url] = one.hexdigest()[:VERSION_LENGTH]
            anys[type_url] = tuple(any_pb2.Any(type_url=type_url, value=data) for data in serialized)
            resource_versions[type_url] = types.MappingProxyType({
                resource_name(m): hashlib.sha256(data).hexdigest()[:VERSION_LENGTH]
                for m, data in zip(msgs, serialized, strict=True)
            })  # fmt: skip
        return cls(
            version=overall.hexdigest()[:VERSION_LENGTH],
            resources=types.MappingProxyType(by_type),
            type_versions=types.MappingProxyType(type_versions),
            anys=types.MappingProxyType(anys),
            resource_versions=types.MappingProxyType(resource_versions),
        )

    def type_version(self, type_url: str) -> str | None:
        """Version of one type's resources; None if this snapshot lacks the type."""
        return self.type_versions.get(type_url)

    def names(self, type_url: str) -> tuple[str, ...]:
        """Sorted resource names of one type (empty if the type is absent)."""
        return tuple(resource_name(m) for m in self.resources.get(type_url, ()))

    def packed(self, type_url: str, names: Iterable[str] | None = None) -> tuple[any_pb2.Any, ...]:
        """Like `select`, each resource packed in an Any (serialised once per snapshot, not per stream)."""
        anys = self.anys.get(type_url, ())
        if names is None:
            return anys
        wanted = set(names)
        return tuple(a for a, m in zip(anys, self.resources.get(type_url, ()), strict=True)
                     if resource_name(m) in wanted)  # fmt: skip

    def select(self, type_url: str, names: Iterable[str] | None = None) -> tuple[Message, ...]:
        """Resources of one type; only those named in `names` unless it is None."""
        msgs = self.resources.get(type_url, ())
        if names is None:
            return msgs
        wanted = set(names)
        return tuple(m for m in msgs if resource_name(m) in wanted)
