"""JSON-RPC messages in a response body, rewritten one by one: a JSON body, or SSE events.

Two body formats, as a streamable-HTTP server (MCP, A2A) answers a POST:

- `application/json` (or `application/*+json`): one JSON-RPC message, or a
  batch array of them.
- `text/event-stream`: SSE events. Each event's `data:` lines are joined with
  "\\n" as the SSE spec says; an event whose message the rewrite changed is
  re-emitted with a single `data:` line in the place of the first one, every
  other line (`event:`, `id:`, `retry:`, comments) and the line terminators
  (CRLF, LF or CR, as received) unchanged. All other events, pings and
  comments are kept byte for byte.

`rewrite(message)` changes a parsed message in place and says whether it did;
it must not raise. Nothing here raises on a malformed body: the outcome says
`failed` when a part that should be JSON could not be read, so the caller can
decide (refusing is the safe default when something must be hidden).

`rewrite_body` works on a whole (buffered) body; `StreamRewriter` on a body
that arrives in chunks and must flow on as it comes (SSE events are passed on
as soon as they are complete; a JSON body is rewritten at its end).
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

Rewrite = Callable[[Any], bool]


class BodyRewriter(Protocol):
    """Anything that rewrites a body as it streams: `feed(chunk, end)` returns what may go on now."""

    def feed(self, chunk: bytes, end: bool) -> bytes: ...


class WholeJsonRewriter:
    """A body read whole as one JSON value (at most MAX_HELD_BYTES), then `rewrite(value)`: the value to
    send instead, or None to withhold it (then `unreadable` is sent, as for a body that is not JSON)."""

    MAX_HELD_BYTES = 8 << 20

    def __init__(self, rewrite: Callable[[Any], Any | None], unreadable: bytes) -> None:
        self._rewrite, self._unreadable = rewrite, unreadable
        self._held = bytearray()
        self.failed = False

    def feed(self, chunk: bytes, end: bool) -> bytes:
        if len(self._held) + len(chunk) > self.MAX_HELD_BYTES:
            self.failed = True
        if not self.failed:
            self._held += chunk
        if not end:
            return b""
        try:
            new = None if self.failed else self._rewrite(json.loads(bytes(self._held)))
        except (ValueError, RecursionError):
            new = None
        if new is None:
            self.failed = True
            return self._unreadable
        return _dump(new).encode("utf-8")


@dataclass(frozen=True)
class BodyRewrite:
    """`body`: the new body, or None when nothing changed; `failed`: some part could not be read."""

    body: bytes | None
    failed: bool = False


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    media = media_type(content_type)
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def is_sse(content_type: str) -> bool:
    return media_type(content_type) == "text/event-stream"


#: What a backend's answer that the gateway rewrites may be: what it can read, as every client reads it.
READABLE_ANSWER_TYPES = ("application/json", "text/event-stream")


def why_unreadable(content_types: list[str], content_encodings: list[str], *, any_json: bool = False) -> str | None:
    """Why a backend's answer (with a body) that the gateway must read and rewrite cannot be, or None.

    One content type, exactly JSON or SSE (`any_json`: also any `+json` type, or none, for readers
    that take every answer that is not SSE for JSON), in UTF-8, uncompressed: a client reads anything
    that merely starts with `application/json` as JSON, joins repeated headers, and decodes by the
    charset, so whatever else the gateway passed on unread could carry what it exists to withhold."""
    encodings = [e.strip().lower() for value in content_encodings for e in value.split(",") if e.strip()]
    if len(encodings) > 1:
        return "has several content encodings"
    if encodings and encodings[0] != "identity":
        return f"is compressed ({encodings[0][:30]})"
    if len(content_types) > 1:
        return "has several content types"
    if not content_types:
        return None if any_json else "has no content type"
    media = media_type(content_types[0])
    if media not in READABLE_ANSWER_TYPES and not (any_json and is_json(media)):
        return f"has content type {media[:60]!r}, not JSON or SSE"
    for parameter in content_types[0].split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"is not UTF-8 ({value.strip()[:30]})"
    return None


def rewrite_body(body: bytes, content_type: str, rewrite: Rewrite) -> BodyRewrite:
    """Apply `rewrite` to each message of a whole body (unknown content types: failed, unchanged)."""
    walk = _Walk(rewrite)
    if is_json(content_type):
        new = walk.json_body(body)
    elif is_sse(content_type):
        new = walk.sse_text(body)
    else:
        new, walk.failed = None, True
    return BodyRewrite(new if walk.changed else None, walk.failed)


def messages(body: bytes, content_type: str) -> Iterator[Any]:
    """Every JSON-RPC message of a whole body (a batch's elements one by one), for reading only."""
    found: list[Any] = []

    def collect(message: Any) -> bool:
        found.extend(message if isinstance(message, list) else [message])
        return False

    rewrite_body(body, content_type, collect)
    return iter(found)


class StreamRewriter:
    """A body rewritten as it streams: `feed(chunk, end)` returns what may go on to the client now.

    SSE: each complete event is rewritten and passed on at once; the rest waits
    for the next chunk (an event is complete at its blank line; a trailing CR
    waits, it may be half of a CRLF). JSON: held until the end (at most
    MAX_HELD_BYTES), then rewritten whole; an SSE event held longer than
    MAX_HELD_BYTES ends what is read of the answer. Other content types pass
    through unchanged (they carry no JSON-RPC message; the routes that rewrite
    answers refuse them first: `why_unreadable`).

    Fail closed: with `unreadable` given, an SSE event whose data is not JSON
    is withheld, and a JSON body that cannot be read (or held) is replaced by
    `unreadable` (an error message for the client); `failed` says it happened.
    """

    MAX_HELD_BYTES = 8 << 20

    def __init__(self, content_type: str, rewrite: Rewrite, *, unreadable: bytes | None = None) -> None:
        self._walk = _Walk(rewrite, drop_unreadable=unreadable is not None)
        self._unreadable = unreadable
        self._sse = is_sse(content_type)
        self._json = is_json(content_type)
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        # The SSE text held until its event ends, in pieces (joined once, when it does), its size in
        # bytes, and its last characters (where the next chunk's search for an event's end starts).
        self._pieces: list[str] = []
        self._held_bytes = 0
        self._tail = ""
        self._overflowed = False  # an SSE event outgrew MAX_HELD_BYTES: the rest is withheld
        self._held = bytearray()  # a JSON body, held whole

    @property
    def failed(self) -> bool:
        return self._walk.failed

    def feed(self, chunk: bytes, end: bool) -> bytes:
        if self._json:
            return self._feed_json(chunk, end)
        if not self._sse:
            return chunk
        if self._overflowed:
            return self._withheld_end() if end else b""
        try:
            text = self._decoder.decode(chunk, final=end)
        except UnicodeDecodeError:
            self._walk.failed = True
            self._pieces, self._held_bytes, self._tail = [], 0, ""
            self._decoder = codecs.getincrementaldecoder("utf-8")()
            return b"" if self._unreadable is not None else chunk
        # Only the new text (and the few characters before it) is searched: an event's end is never
        # in what was held before, so each chunk costs its own length, not the event's.
        probe = self._tail + text
        cut = len(probe) if end else _last_event_end(probe)
        complete = None  # the events that end here, if any
        if cut == 0:  # no event ends here: hold the text
            self._pieces.append(text)
            self._held_bytes += len(chunk)
            self._tail = probe[-3:]
        else:
            cut -= len(self._tail)  # in `text` (an end found in the tail itself is at the tail's end: 0)
            complete = "".join([*self._pieces, text[:cut]])
            rest = text[cut:]
            self._pieces, self._held_bytes, self._tail = [rest], len(rest.encode("utf-8")), rest[-3:]
        out = self._walk.sse_events(complete).encode("utf-8") if complete else b""
        if self._held_bytes > self.MAX_HELD_BYTES:
            # An event that never ends: nothing more of this answer is read or passed on.
            self._walk.failed, self._overflowed = True, True
            self._pieces, self._held_bytes, self._tail = [], 0, ""
            return out + (self._withheld_end() if end else b"")
        return out

    def _withheld_end(self) -> bytes:
        """The end of an SSE answer the gateway stopped reading: its error, as one event."""
        if self._unreadable is None:
            return b""
        return b"event: message\ndata: " + self._unreadable + b"\n\n"

    def _feed_json(self, chunk: bytes, end: bool) -> bytes:
        if len(self._held) + len(chunk) > self.MAX_HELD_BYTES:
            self._walk.failed = True
            self._held = bytearray()
        elif not self._walk.failed:
            self._held += chunk  # a bytearray: amortised, not a copy of everything held per chunk
        if not end:
            return b""
        held = bytes(self._held)
        if self._walk.failed:
            return self._unreadable if self._unreadable is not None else held
        new = self._walk.json_body(held)
        if self._walk.failed and self._unreadable is not None:
            return self._unreadable
        return new if new is not None else held


def _last_event_end(text: str) -> int:
    """Where the last complete event of `text` ends (after its blank line), 0 if none does. A blank
    line ending in CR at the very end is not one yet: the CR may be half of a CRLF."""
    cut = 0
    for m in _BLANK_LINE.finditer(text):
        if m.group().endswith("\r") and m.end() == len(text):
            break
        cut = m.end()
    return cut


# Two line ends in a row; a CR followed by LF is one line end (CRLF), never two.
_BLANK_LINE = re.compile(r"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


# ---------------------------------------------------------------- walking bodies


class _Walk:
    def __init__(self, rewrite: Rewrite, *, drop_unreadable: bool = False) -> None:
        self.rewrite = rewrite
        self.drop_unreadable = drop_unreadable  # an SSE event that cannot be read is withheld
        self.failed = False
        self.changed = False

    def json_body(self, body: bytes) -> bytes | None:
        message = self._parse(body)
        if message is _UNPARSED or not self.rewrite(message):
            return None
        self.changed = True
        return _dump(message).encode("utf-8")

    def sse_text(self, body: bytes) -> bytes | None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self.failed = True
            return None
        out = self.sse_events(text)
        return out.encode("utf-8") if self.changed else None

    def sse_events(self, text: str) -> str:
        bom = "\ufeff" if text.startswith("\ufeff") else ""  # the client strips one; keep it in place
        out: list[str] = [bom]
        event: list[tuple[str, str]] = []
        for line, term in _split_lines(text[len(bom) :]):
            event.append((line, term))
            if line == "":  # a blank line ends (dispatches) the event
                self._emit_event(event, out)
                event = []
        if event:  # an unterminated last event: a client drops it, but rewrite it anyway
            self._emit_event(event, out)
        return "".join(out)

    def _emit_event(self, lines: list[tuple[str, str]], out: list[str]) -> None:
        data_at = [i for i, (line, _) in enumerate(lines) if not line.startswith(":") and _field(line)[0] == "data"]
        data = "\n".join(_field(lines[i][0])[1] for i in data_at)
        if not data.strip():  # a priming or keepalive event, or a comment: nothing to read
            out.extend(line + term for line, term in lines)
            return
        message = self._parse(data)
        if message is _UNPARSED and self.drop_unreadable:
            self.changed = True
            return
        if message is _UNPARSED or not self.rewrite(message):
            out.extend(line + term for line, term in lines)
            return
        self.changed = True
        first, drop = data_at[0], set(data_at[1:])
        for i, (line, term) in enumerate(lines):
            if i == first:
                out.append("data: " + _dump(message) + term)
            elif i not in drop:
                out.append(line + term)

    def _parse(self, data: bytes | str) -> Any:
        """JSON text → Python value, or `_UNPARSED` (and `failed`) for anything that is not JSON."""
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self.failed = True
            return _UNPARSED


_UNPARSED: Any = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would come back out as `Infinity`, which is not JSON
        raise ValueError(f"{text} does not fit a double")
    return value


def _dump(message: Any) -> str:
    # Compact and single-line (an SSE data line cannot hold a raw newline; json escapes them in strings).
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (valid as a JSON escape, not as UTF-8): keep it escaped
        return json.dumps(message, ensure_ascii=True, separators=(",", ":"))
    return text


_LINE_RE = re.compile(r"([^\r\n]*)(\r\n|\r|\n|\Z)")


def _split_lines(text: str) -> list[tuple[str, str]]:
    """(line, terminator) pairs covering `text` exactly; the last terminator may be ""."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _LINE_RE.match(text, pos)
        assert m is not None  # the pattern matches at any position
        pairs.append((m.group(1), m.group(2)))
        pos = m.end()
    return pairs


def _field(line: str) -> tuple[str, str]:
    """SSE field name and value (one leading space after the colon is not part of the value)."""
    name, colon, value = line.partition(":")
    if colon and value.startswith(" "):
        value = value[1:]
    return name, value
