"""Sealed ids (authz/sealing.py), where MCP carries task ids (authz/mcp/tasks.py), and streamed rewriting
(authz/messages.py StreamRewriter): pure functions, with hypothesis where chunking matters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.authz.mcp import tasks
from xds_server.authz.messages import StreamRewriter, rewrite_body, why_unreadable
from xds_server.authz.sealing import Owner, Sealed, Sealer, WeakKey, key_from_file

KEY = b"k" * 32
TRIAGE = Owner("triage", "alice")


def test_a_sealed_id_opens_to_what_it_seals_and_is_the_same_every_time() -> None:
    sealer = Sealer(KEY)
    sealed = Sealed("gw/reports", TRIAGE, "build_report", "raw-ü-1")
    text = sealer.seal(sealed)
    assert text == sealer.seal(sealed) and text.startswith("t1.")
    assert all(c.isalnum() or c in "-_." for c in text)  # header-safe
    assert sealer.open(text) == sealed


@settings(max_examples=200, derandomize=True)
@given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_altered_character_or_another_key_opens_nothing(position: int, replacement: str) -> None:
    text = Sealer(KEY).seal(Sealed("gw/reports", TRIAGE, "build_report", "raw-1"))
    i = position % len(text)
    altered = text[:i] + replacement + text[i + 1 :]
    if altered != text:
        assert Sealer(KEY).open(altered) is None
    assert Sealer(b"x" * 32).open(text) is None


def test_what_is_not_a_sealed_id_opens_nothing() -> None:
    sealer = Sealer(KEY)
    for text in (None, 7, "", "raw-1", "t1.", "t1..", "t1.e30.AAAA", "=?base64?dDE=?=", "t1.ü.x"):
        assert sealer.open(text) is None


def test_the_key_file_is_made_once_owner_only_as_hex_text(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sealing.key"
    key = key_from_file(path)
    assert len(key) == 64 and bytes.fromhex(key.decode()) and key_from_file(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["sealing.key"]  # no temporary file left behind


def test_a_short_or_empty_key_is_never_used(tmp_path: Path) -> None:
    path = tmp_path / "sealing.key"
    for held in ("", "short"):
        path.write_text(held)
        with pytest.raises(WeakKey, match="at least 32"):
            key_from_file(path)
    with pytest.raises(WeakKey):
        Sealer(b"")


def test_created_task_ids_in_both_revisions() -> None:
    legacy = {"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "a", "status": "working"}}}
    modern = {"jsonrpc": "2.0", "id": 1, "result": {"resultType": "task", "taskId": "b", "status": "working"}}
    plain = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "taskId": "c"}}  # not a task handle
    notification = {"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": {"taskId": "d"}}
    assert tasks.created_task_ids(legacy) == ["a"] and tasks.created_task_ids(modern) == ["b"]
    assert tasks.created_task_ids(plain) == [] and tasks.created_task_ids(notification) == []
    assert tasks.created_task_ids([legacy, modern]) == ["a", "b"]


def test_every_place_a_task_id_is_carried_is_replaced_and_nothing_else() -> None:
    related = {tasks.RELATED_TASK: {"taskId": "raw"}}
    messages = [
        {"id": 1, "result": {"taskId": "raw", "status": "completed", "note": "raw"}},
        {"id": 2, "result": {"task": {"taskId": "raw"}}},
        {"id": 3, "result": {"content": [{"type": "text", "text": "raw"}], "_meta": related}},
        {"method": "notifications/tasks/status", "params": {"taskId": "raw"}},
        {"method": "notifications/progress", "params": {"_meta": json.loads(json.dumps(related))}},
        {"id": 4, "result": {"taskId": "other"}},
    ]
    assert tasks.replace_task_ids(messages, {"raw": "sealed"})
    text = json.dumps(messages)
    assert text.count('"taskId": "sealed"') == 5 and '"taskId": "other"' in text
    assert '"note": "raw"' in text and '"text": "raw"' in text  # only task ids, never other text


def test_a_task_request_is_restored_byte_for_byte_or_not_at_all() -> None:
    body = b'{"jsonrpc":"2.0","id":9,"method":"tasks/get","params":{"taskId":"t1.x.y","_meta":{"a":1.50}}}'
    assert tasks.task_request(body) == (9, "t1.x.y")
    assert tasks.restore_task_id(body, "t1.x.y", "raw") == body.replace(b"t1.x.y", b"raw")
    escaped = b'{"jsonrpc":"2.0","id":9,"method":"tasks/get","params":{"taskId":"\\u0074\\u0031.x.y"}}'
    assert tasks.task_request(escaped) == (9, "t1.x.y")
    assert tasks.restore_task_id(escaped, "t1.x.y", "raw") is None  # not written plainly: refused
    assert tasks.task_request(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}') is None
    assert tasks.header_value("abc-1") == "abc-1" and tasks.header_value("ü").startswith("=?base64?")
    repeated = b'{"jsonrpc":"2.0","id":9,"method":"tasks/get","params":{"taskId":"victim","taskId":"t1.x.y"}}'
    assert tasks.task_request(repeated) is None  # which taskId counts is never guessed


def _sse(*messages: dict[str, object]) -> bytes:
    return "".join(f"event: message\r\ndata: {json.dumps(m)}\r\n\r\n" for m in messages).encode()


def _replace(message: object) -> bool:
    return tasks.replace_task_ids(message, {"raw": "sealed-id"})


@settings(max_examples=150, derandomize=True)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_a_streamed_sse_body_cut_anywhere_comes_out_as_the_whole_body_would(cuts: list[int]) -> None:
    body = _sse({"method": "notifications/progress", "params": {"_meta": {tasks.RELATED_TASK: {"taskId": "raw"}}}},
                {"id": 2, "result": {"content": [{"type": "text", "text": "é"}], "taskId": "raw"}})  # fmt: skip
    whole = rewrite_body(body, "text/event-stream", _replace)
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    stream = StreamRewriter("text/event-stream", _replace)
    out = b"".join(stream.feed(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks))
    assert out == whole.body and b"raw" not in out and not stream.failed


def test_a_streamed_json_body_is_held_to_its_end() -> None:
    body = json.dumps({"id": 1, "result": {"taskId": "raw"}}).encode()
    stream = StreamRewriter("application/json", _replace)
    assert stream.feed(body[:10], False) == b""
    assert json.loads(stream.feed(body[10:], True))["result"]["taskId"] == "sealed-id"


def test_a_streamed_sse_event_that_cannot_be_read_is_withheld() -> None:
    body = b"data: {not json raw\n\n" + _sse({"id": 2, "result": {"taskId": "raw"}})
    stream = StreamRewriter("text/event-stream", _replace, unreadable=b"{}")
    out = stream.feed(body, True)
    assert b"not json" not in out and b"sealed-id" in out and stream.failed
    held = StreamRewriter("application/json", _replace, unreadable=b'{"error":1}')
    assert held.feed(b'{"id": 1, "result": {"taskId": "raw"', True) == b'{"error":1}'


def test_an_sse_event_that_never_ends_is_not_held_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StreamRewriter, "MAX_HELD_BYTES", 1000)
    stream = StreamRewriter("text/event-stream", _replace, unreadable=b'{"error":1}')
    assert stream.feed(_sse({"id": 1, "result": {"taskId": "raw"}}), False).count(b"sealed-id") == 1
    endless = b'data: {"id": 2, "result": {"taskId": "raw", "pad": "' + b"x" * 600
    assert stream.feed(endless, False) == b""
    assert stream.feed(b"x" * 600, False) == b""  # past the limit: the answer is no longer read
    assert stream.feed(b'"}}\n\n' + _sse({"id": 3, "result": {"taskId": "raw"}}), False) == b""
    assert stream.feed(b"", True) == b'event: message\ndata: {"error":1}\n\n' and stream.failed


def test_an_sse_body_is_searched_once_for_the_end_of_its_events() -> None:
    # Chunks of one long event, then its blank line split across two chunks: one event, rewritten whole.
    event = _sse({"id": 1, "result": {"taskId": "raw", "pad": "y" * 5000}})
    stream = StreamRewriter("text/event-stream", _replace)
    pieces = [event[i : i + 7] for i in range(0, len(event), 7)]
    out = b"".join(stream.feed(piece, False) for piece in pieces) + stream.feed(b"", True)
    assert out == rewrite_body(event, "text/event-stream", _replace).body


@pytest.mark.parametrize(
    ("content_types", "encodings", "any_json", "why"),
    [
        (["application/json"], [], False, None),
        (["text/event-stream"], ["identity"], False, None),
        (["application/json; charset=utf-8"], [], False, None),
        (['text/event-stream; charset="UTF-8"'], [], False, None),
        (["application/json ; charset = utf-8"], [], False, None),
        ([], [], False, "has no content type"),
        ([], [], True, None),  # an A2A reader takes what is not SSE for JSON
        (["application/a2a+json"], [], True, None),
        (["application/json", "application/json"], [], True, "has several content types"),
        (
            ["application/json, text/plain"],
            [],
            False,
            "has content type 'application/json, text/plain', not JSON or SSE",
        ),
        (["application/jsonx"], [], True, "has content type 'application/jsonx', not JSON or SSE"),
        (["application/problem+json"], [], False, "has content type 'application/problem+json', not JSON or SSE"),
        (["text/event-stream; charset=utf-16-le"], [], True, "is not UTF-8 (utf-16-le)"),
        (["application/json"], ["gzip"], True, "is compressed (gzip)"),
        (["application/json"], ["gzip", "identity"], False, "has several content encodings"),
        (["application/json"], ["identity, gzip"], False, "has several content encodings"),
    ],
)
def test_an_answer_the_gateway_rewrites_must_be_one_it_reads_as_every_client_does(
    content_types: list[str], encodings: list[str], any_json: bool, why: str | None
) -> None:
    assert why_unreadable(content_types, encodings, any_json=any_json) == why


@settings(max_examples=100, derandomize=True)
@given(cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_crlf_events_of_several_lines_come_out_whole_wherever_cut(cuts: list[int]) -> None:
    event = json.dumps({"id": 2, "result": {"taskId": "raw"}})
    body = f"event: message\r\ndata: {event[:20]}\r\ndata: {event[20:]}\r\n\r\n".encode()
    whole = rewrite_body(body, "text/event-stream", _replace)
    assert whole.body is not None and b"sealed-id" in whole.body and not whole.failed
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    stream = StreamRewriter("text/event-stream", _replace, unreadable=b"{}")
    out = b"".join(stream.feed(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks))
    assert out == whole.body and not stream.failed


def test_complete_events_in_one_chunk_count_nothing_against_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StreamRewriter, "MAX_HELD_BYTES", 1000)
    events = b"".join(_sse({"id": i, "result": {"taskId": "raw", "pad": "z" * 80}}) for i in range(30))
    stream = StreamRewriter("text/event-stream", _replace, unreadable=b"{}")
    out = stream.feed(events, False) + stream.feed(b"", True)
    assert out.count(b"sealed-id") == 30 and not stream.failed


def test_a_created_task_id_beside_a_method_is_sealed_too() -> None:
    # A client may read {"method": null, "result": ...} as a response: its task id is not passed on raw.
    assert tasks.created_task_ids(
        {"jsonrpc": "2.0", "id": 1, "method": None, "result": {"task": {"taskId": "t1"}}}
    ) == ["t1"]
