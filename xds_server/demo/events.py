"""An in-memory event store for the demo server (`--resumable`): SSE events get ids, and a client that
reconnects with `Last-Event-ID` is sent the events of that stream it missed (MCP resumability)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage

MAX_EVENTS = 10_000  # oldest forgotten first: a demo, not a durable log


@dataclass(frozen=True)
class _Event:
    id: EventId
    stream: StreamId
    message: JSONRPCMessage | None


class InMemoryEventStore(EventStore):
    def __init__(self) -> None:
        self._events: list[_Event] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event = _Event(str(next(self._ids)), stream_id, message)
        self._events.append(event)
        del self._events[:-MAX_EVENTS]
        return event.id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        last = next((e for e in self._events if e.id == last_event_id), None)
        if last is None:
            return None
        for event in self._events:
            if event.stream == last.stream and int(event.id) > int(last.id) and event.message is not None:
                await send_callback(EventMessage(event.message, event.id))
        return last.stream
