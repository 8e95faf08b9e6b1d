"""State-of-the-world ADS: a pure per-stream state machine and a thin grpc.aio servicer.

The protocol logic is two pure functions over an immutable `StreamState`:

* `on_request(state, request) -> (state, Event)` classifies what Envoy sent:
  SUBSCRIBE (first request for a type on this stream, or a request without a
  nonce), ACK / NACK (the nonce of the latest response, without / with
  `error_detail`), STALE (an older nonce: ignored entirely), or REQUEST (the
  latest nonce again, already answered: only its resource names matter).
* `next_response(state, snapshot) -> (state, DiscoveryResponse | None)` picks
  the next response to send, or None when there is nothing to send. Call it
  repeatedly until it returns None.

Rules (after go-control-plane and Istio):

* Every response has a fresh nonce; at most one response per type is in
  flight, the next waits for the ACK or NACK of the previous one.
* `version_info` is the snapshot's per-type version, so an unchanged type is
  not re-sent when another type changes.
* A NACKed version is parked: never sent again on this stream (even if Envoy
  changes the names it asks for) until the snapshot's version of that type
  changes. This is what stops a resend loop.
* SotW: Cluster, Listener and ScopedRoute responses carry every resource of
  the type, and Secret and extension-config (ECDS) responses every named one
  (a secret a response leaves out is missing to Envoy's newer SotW code). EDS and RDS responses carry only the
  named resources the client has not ACKed in their current form
  (per-resource versions), so an edit of one route configuration sends that
  one alone (Envoy keeps the named resources a response leaves out). A
  NACKed response counts as not received: what it carried is sent again. A
  cluster that changed makes its endpoints due again (Envoy warms an updated
  cluster until it gets them). A response goes out whenever the type's
  version changes, even with no resource in it, so that every type's version
  is acknowledged.
* When several types are due, they go out in `snapshot.ORDER` (CDS, EDS, SDS,
  ECDS, LDS, SRDS, RDS) so that Envoy can warm clusters, secrets and filter
  configurations before listeners refer to them.
* The node is taken from the first request that carries one
  (`set_node_on_first_message_only: true`); its group is `node.cluster`.
  An Envoy whose node metadata names a listen port gets its listeners on
  that port (node_overrides.py: several replicas on one machine).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from . import snapshot as snap
from .cache import SnapshotCache
from .node_overrides import listen_port_of, with_listen_port
from .snapshot import Snapshot
from .status import StatusRecorder

log = logging.getLogger(__name__)

#: Sent in every response's `control_plane.identifier` (visible in Envoy's config dump).
CONTROL_PLANE_ID = "agentxds"


class EventKind(enum.Enum):
    """What a DiscoveryRequest meant, as decided by `on_request`."""

    SUBSCRIBE = "subscribe"
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"
    REQUEST = "request"


@dataclass(frozen=True)
class Event:
    """The classification of one request.

    `version` is the acknowledged version (ACK), the rejected version (NACK),
    or the version the client says it already runs (SUBSCRIBE, may be empty).
    `error` is `error_detail.message` of a NACK, kept verbatim (never parsed).
    """

    kind: EventKind
    type_url: str
    version: str = ""
    error: str = ""
    nonce: str = ""


@dataclass(frozen=True)
class TypeState:
    """Per-type protocol state of one stream.

    `dirty` means the client asked for something not answered yet (a new
    subscription or changed resource names); it forces a response even when
    the version did not change.
    """

    names: frozenset[str] = frozenset()
    nonce: str = ""
    in_flight: bool = False
    sent_version: str | None = None
    acked_version: str | None = None
    rejected_version: str | None = None
    dirty: bool = True
    #: Each resource sent on this stream, with its version as sent (the response may be in flight).
    sent_resources: Mapping[str, str] = field(default_factory=dict)
    #: What the client ACKed: each resource and its version (what it holds).
    acked_resources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamState:
    """Everything one ADS stream remembers; replaced, never mutated.

    `stream_id` prefixes nonces so they are unique across streams (easier to
    follow in logs); `sent` counts responses and makes each nonce fresh.
    """

    stream_id: str
    node: base_pb2.Node | None = None
    types: Mapping[str, TypeState] = field(default_factory=dict)
    sent: int = 0

    @property
    def node_id(self) -> str:
        return self.node.id if self.node is not None else ""

    @property
    def group(self) -> str | None:
        """The node group (`node.cluster`), or None before the node is known."""
        return self.node.cluster if self.node is not None else None


#: Types whose responses carry only what changed (see the module docstring).
PER_RESOURCE_TYPES = frozenset({snap.ENDPOINT, snap.ROUTE})
#: A changed resource of the first type makes the resource of the same name of the second due again.
_DEPENDENTS = {snap.CLUSTER: snap.ENDPOINT}


def _with_type(state: StreamState, type_url: str, ts: TypeState, **changes: object) -> StreamState:
    types = dict(state.types)
    if type_url in PER_RESOURCE_TYPES:
        # A name the client no longer asks for is forgotten: asked for again, it is sent again.
        ts = replace(ts, sent_resources={n: v for n, v in ts.sent_resources.items() if n in ts.names},
                     acked_resources={n: v for n, v in ts.acked_resources.items() if n in ts.names})  # fmt: skip
    types[type_url] = ts
    return replace(state, types=types, **changes)  # type: ignore[arg-type]


def on_request(state: StreamState, req: discovery_pb2.DiscoveryRequest) -> tuple[StreamState, Event]:
    """Apply one DiscoveryRequest to the stream state. Pure: `req` is only read."""
    if state.node is None and req.HasField("node"):
        node = base_pb2.Node()
        node.CopyFrom(req.node)
        state = replace(state, node=node)

    type_url = req.type_url
    names = frozenset(req.resource_names)
    ts = state.types.get(type_url)

    # No nonce, or nothing sent yet for this type on this stream (a nonce from
    # an earlier stream means nothing here): a subscription to answer.
    if ts is None or not req.response_nonce:
        prev = ts or TypeState()
        # A new subscription is answered with everything it names.
        new = replace(prev, names=names, in_flight=False, dirty=True, sent_resources={}, acked_resources={})
        event = Event(EventKind.SUBSCRIBE, type_url, version=req.version_info)
        return _with_type(state, type_url, new), event

    if req.response_nonce != ts.nonce:
        # Stale: Envoy answered an older response; a newer one is on its way
        # and its ACK/NACK will carry the current names again.
        return state, Event(EventKind.STALE, type_url, nonce=req.response_nonce)

    dirty = ts.dirty or names != ts.names
    if not ts.in_flight:
        # The latest nonce again, already ACKed/NACKed: e.g. EDS asking for
        # the clusters CDS just added. Only the names can have changed.
        new = replace(ts, names=names, dirty=dirty)
        return _with_type(state, type_url, new), Event(EventKind.REQUEST, type_url)

    version = ts.sent_version or ""
    if req.HasField("error_detail"):
        # Nothing of a refused response counts as held: what it carried is due again.
        new = replace(ts, names=names, in_flight=False, rejected_version=ts.sent_version, dirty=dirty,
                      sent_resources=ts.acked_resources)  # fmt: skip
        event = Event(EventKind.NACK, type_url, version, req.error_detail.message, req.response_nonce)
    else:
        new = replace(ts, names=names, in_flight=False, acked_version=ts.sent_version, dirty=dirty,
                      acked_resources=ts.sent_resources)  # fmt: skip
        event = Event(EventKind.ACK, type_url, version, nonce=req.response_nonce)
    return _with_type(state, type_url, new), event


def _type_order(type_urls: Mapping[str, TypeState]) -> list[str]:
    known = [t for t in snap.ORDER if t in type_urls]
    return known + sorted(t for t in type_urls if t not in snap.ORDER)


def next_response(
    state: StreamState, snapshot: Snapshot | None
) -> tuple[StreamState, discovery_pb2.DiscoveryResponse | None]:
    """The next response this stream should send for `snapshot`, if any. Pure."""
    if snapshot is None:
        return state, None  # the group has no config yet: keep the stream waiting
    for type_url in _type_order(state.types):
        ts = state.types[type_url]
        version = snapshot.type_version(type_url)
        if version is None or ts.in_flight or version == ts.rejected_version:
            continue  # not served / awaiting ACK / parked after NACK
        if not ts.dirty and version == ts.sent_version:
            continue  # Envoy already has exactly this
        wildcard = type_url in snap.WILDCARD_TYPES
        if not wildcard and not ts.names:
            # Nothing named (e.g. EDS after the last EDS cluster went away):
            # nothing to send, and nothing is pending any more.
            state = _with_type(state, type_url, replace(ts, dirty=False))
            continue
        count = state.sent + 1
        nonce = f"{state.stream_id}-{count}"
        resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
        resp.control_plane.identifier = CONTROL_PLANE_ID
        sent_resources = ts.sent_resources
        current = snapshot.resource_versions.get(type_url, {})
        if type_url in PER_RESOURCE_TYPES:
            due = [n for n in sorted(ts.names) if n in current and ts.sent_resources.get(n) != current[n]]
            resp.resources.extend(snapshot.packed(type_url, due))
            sent_resources = {**ts.sent_resources, **{n: current[n] for n in due}}
        else:
            packed = snapshot.packed(type_url, None if wildcard else ts.names)
            port = listen_port_of(state.node) if type_url == snap.LISTENER else None
            resp.resources.extend(packed if port is None else with_listen_port(packed, port))
            sent_resources = dict(current) if wildcard else {n: current[n] for n in ts.names if n in current}
        new = replace(ts, nonce=nonce, in_flight=True, sent_version=version, dirty=False, sent_resources=sent_resources)
        state = _with_type(state, type_url, new, sent=count)
        dependent = _DEPENDENTS.get(type_url)
        if dependent is not None and dependent in state.types:
            changed = {n for n, v in current.items() if ts.sent_resources.get(n) not in (None, v)}
            state = _due_again(state, dependent, changed)
        return state, resp
    return state, None


def _due_again(state: StreamState, type_url: str, names: set[str]) -> StreamState:
    """`names` of `type_url` sent again (the client needs them anew), as soon as it may be sent."""
    ts = state.types[type_url]
    if not names & ts.names:
        return state
    keep = {n: v for n, v in ts.sent_resources.items() if n not in names}
    return _with_type(state, type_url, replace(ts, sent_resources=keep, dirty=True))


_END = object()  # queued by the reader when the client half-closes


async def _pump(requests: AsyncIterator[discovery_pb2.DiscoveryRequest], queue: asyncio.Queue) -> None:
    """Copy requests into `queue` so the stream loop can wait on them and on the cache."""
    try:
        async for req in requests:
            queue.put_nowait(req)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the stream broke: end it quietly, the client reconnects
        log.debug("ADS request stream ended: %r", exc)
    queue.put_nowait(_END)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """grpc.aio adapter: feeds requests and cache changes into the pure functions."""

    def __init__(self, cache: SnapshotCache, recorder: StatusRecorder) -> None:
        self._cache = cache
        self._recorder = recorder
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End every open stream (with OK) so a server can stop without waiting for grace."""
        self._closing.set()

    async def StreamAggregatedResources(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        state = StreamState(stream_id=uuid.uuid4().hex[:8])
        queue: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_pump(request_iterator, queue))
        closing = asyncio.create_task(self._closing.wait())
        get: asyncio.Task | None = None
        change: asyncio.Task | None = None
        connected = False
        try:
            while True:
                snapshot = self._cache.get(state.group) if state.group is not None else None
                while True:
                    state, resp = next_response(state, snapshot)
                    if resp is None:
                        break
                    self._recorder.on_sent(state.node_id, resp.type_url, resp.version_info, resp.nonce)
                    yield resp

                # Both waits survive loop iterations that did not complete them.
                if get is None:
                    get = asyncio.create_task(queue.get())
                waits = {get, closing}
                if state.group is not None:
                    if change is None:
                        known = snapshot.version if snapshot is not None else None
                        change = asyncio.create_task(self._cache.wait_for_change(state.group, known))
                    waits.add(change)
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    return
                if change in done:
                    change = None  # the loop head reads the new snapshot
                if get not in done:
                    continue
                req, get = get.result(), None
                if req is _END:
                    return
                state, event = on_request(state, req)
                if state.node is None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry a node")
                if not connected:
                    connected = True
                    self._recorder.node_connected(state.node_id, state.group or "")
                    log.info("ADS stream %s opened by node %r (group %r)", state.stream_id, state.node_id, state.group)
                self._record(state, event)
        finally:
            for task in (reader, closing, get, change):
                if task is not None:
                    task.cancel()
            if connected:
                self._recorder.node_disconnected(state.node_id)
                log.info("ADS stream %s of node %r closed", state.stream_id, state.node_id)

    def _record(self, state: StreamState, event: Event) -> None:
        node_id = state.node_id
        if event.kind is EventKind.ACK:
            self._recorder.on_ack(node_id, event.type_url, event.version)
        elif event.kind is EventKind.NACK:
            self._recorder.on_nack(node_id, event.type_url, event.version, event.error)
        elif event.kind is EventKind.SUBSCRIBE:
            self._recorder.on_subscribe(node_id, event.type_url, event.version)
            if event.type_url not in snap.ORDER:
                log.info("node %r subscribed to %s, which this control plane may not serve", node_id, event.type_url)
        elif event.kind is EventKind.STALE:
            log.debug("node %r: stale nonce %s for %s ignored", node_id, event.nonce, event.type_url)

    async def DeltaAggregatedResources(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        # Incremental xDS is not implemented: say so explicitly rather than hang.
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "agentxds serves state-of-the-world ADS only (ads_config.api_type: GRPC)"
        )
