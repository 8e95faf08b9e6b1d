"""Fuzzing (hypothesis, bounded example counts): the policy loader and the list rewriter.

- The loader, fed random text and mutations of the demo policies (lines
  dropped, duplicated, swapped, characters changed), never raises anything
  but PolicyError, and every diagnostic names its file and a line in it.
- The list rewriter, fed random bytes as any content type, never raises;
  fed list responses as JSON or SSE (the JSON split over several `data:`
  lines at random points between tokens, other events and comments around
  it, random line terminators), it removes exactly the hidden items and keeps every other
  item exactly as it was. (ext_proc hands it the whole buffered body, so the
  SSE framing, not network chunks, is where a split can fall.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xds_server.authz.mcp.listing import LIST_KINDS, item_name, rewrite_list_response
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_texts
from xds_server.policy.yamldoc import YAML_LINE_BREAK

DEMO = Path(__file__).resolve().parents[2] / "policies" / "demo"
DEMO_FILES = {p.name: p.read_text() for p in sorted(DEMO.glob("*.yaml"))}
# Derandomized: CI runs the same examples every time (a failure reproduces); widen locally with
# HYPOTHESIS settings profiles if you hunt for more.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def _load_checked(files: dict[str, str]) -> None:
    """Load `files`: a valid set, or a PolicyError whose diagnostics each point into a given file."""
    try:
        load_texts(files)
    except PolicyError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.file in files, d
            lines = len(YAML_LINE_BREAK.split(files[d.file]))
            assert 1 <= d.line <= lines, d
            assert d.message, d


# ---------------------------------------------------------------- the policy loader


@FUZZ
@given(st.text(max_size=400))
@example("\x1f")  # a character YAML forbids: once reported on line 0
@example("\x850")  # NEL is a YAML line break: the scalar is on line 2
def test_random_text_is_loaded_or_refused_with_file_and_line(text: str) -> None:
    _load_checked({**DEMO_FILES, "fuzz.yaml": text})


_YAMLISH = st.text(alphabet=st.sampled_from(list("abkind:spec -[]{}\"'#&*!|>%@`,\n\t0123")), max_size=200)


@FUZZ
@given(st.sampled_from(sorted(DEMO_FILES)), st.data())
def test_mutated_demo_policies_are_loaded_or_refused_with_file_and_line(name: str, data: st.DataObject) -> None:
    lines = DEMO_FILES[name].split("\n")
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "duplicate", "swap", "char", "insert"]))
        if action == "drop" and len(lines) > 1:
            del lines[at]
        elif action == "duplicate":
            lines.insert(at, lines[at])
        elif action == "swap":
            other = data.draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif action == "char" and lines[at]:
            col = data.draw(st.integers(0, len(lines[at]) - 1))
            lines[at] = lines[at][:col] + data.draw(st.characters()) + lines[at][col + 1 :]
        else:
            lines.insert(at, data.draw(_YAMLISH))
    _load_checked({**DEMO_FILES, name: "\n".join(lines)})


# ---------------------------------------------------------------- the list rewriter

_CONTENT_TYPES = st.sampled_from(["application/json", "text/event-stream", "text/event-stream; charset=utf-8",
                                  "application/problem+json", "text/plain", ""])  # fmt: skip


@FUZZ
@given(st.binary(max_size=600), _CONTENT_TYPES)
def test_any_bytes_never_crash_the_rewriter(body: bytes, content_type: str) -> None:
    rewrite_list_response(body, content_type, lambda kind, item: False)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_NAMES = st.text(alphabet="abcxyz_/:.", min_size=1, max_size=6)


@st.composite
def _list_response(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A JSON-RPC list response (some list kinds, items with extra fields) and the names to hide."""
    result: dict[str, Any] = {}
    for kind in draw(st.lists(st.sampled_from(LIST_KINDS), min_size=1, max_size=2, unique=True)):
        key = {"tools": "name", "prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}[kind]
        names = draw(st.lists(_NAMES, max_size=5, unique=True))
        result[kind] = [{key: n, "extra": draw(_JSON)} for n in names]
    if draw(st.booleans()):
        result["nextCursor"] = draw(st.text(max_size=5))
    every = [item_name(k, i) for k in LIST_KINDS for i in result.get(k, [])]
    hidden = set(draw(st.lists(st.sampled_from(every), unique=True))) if every else set()
    return {"jsonrpc": "2.0", "id": draw(st.integers() | st.text(max_size=4)), "result": result}, hidden


def _sse(data: st.DataObject, message: dict[str, Any]) -> bytes:
    """`message` as one SSE event among others, its JSON split over `data:` lines at random points."""
    eol = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = json.dumps(message)
    # SSE joins data lines with "\n", so a split may only fall where JSON allows a line break:
    # between tokens (json.dumps puts a space after every "," and ":").
    spaces = [i for i, c in enumerate(text) if c == " " and _between_tokens(text, i)]
    cuts = sorted(data.draw(st.lists(st.sampled_from(spaces), max_size=3, unique=True))) if spaces else []
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    event = "".join(f"data: {p}{eol}" for p in parts)
    before = data.draw(st.sampled_from(["", f": ping{eol}{eol}", f"event: message{eol}id: 1{eol}"]))
    after = data.draw(st.sampled_from(["", f"{eol}: keepalive{eol}", f"{eol}data: {{}}{eol}"]))
    return (before + event + after + eol).encode()


def _between_tokens(text: str, i: int) -> bool:
    """Whether position `i` of JSON `text` is outside every string."""
    inside, escaped = False, False
    for c in text[:i]:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = inside
        elif c == '"':
            inside = not inside
    return not inside


def _messages(body: bytes, content_type: str) -> list[Any]:
    if content_type == "application/json":
        return [json.loads(body)]
    out = []
    for event in body.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:"))
        if data:
            out.append(json.loads(data))
    return out


@FUZZ
@given(_list_response(), st.sampled_from(["application/json", "text/event-stream"]), st.data())
def test_the_rewriter_removes_exactly_the_hidden_items(
    response: tuple[dict[str, Any], set[str]], content_type: str, data: st.DataObject
) -> None:
    message, hidden = response
    body = json.dumps(message).encode() if content_type == "application/json" else _sse(data, message)
    rewrite = rewrite_list_response(body, content_type, lambda kind, item: item_name(kind, item) not in hidden)
    assert not rewrite.parse_failed
    out = rewrite.body if rewrite.body is not None else body
    [answer] = [m for m in _messages(out, content_type) if isinstance(m, dict) and "result" in m]
    expected = {k: [i for i in v if item_name(k, i) not in hidden] if k in LIST_KINDS else v
                for k, v in message["result"].items()}  # fmt: skip
    assert answer["result"] == expected and answer["id"] == message["id"]
    assert sorted(rewrite.removed) == sorted(
        n for k in LIST_KINDS for n in (item_name(k, i) for i in message["result"].get(k, [])) if n in hidden
    )
