"""List-response rewriting (xds_server/authz/listing.py) on bodies the MCP SDK server really sends.

The files in tests/unit/data are the demo server's exact answers
(`tests/unit/data/capture_list_bodies.py` regenerates them): 2025-11-25
answers in SSE (`event: message`, CRLF line ends) or JSON, 2026-07-28 answers in
JSON unless the handler emits a notification first (the `paged-*` bodies,
from a paginating variant that sends a progress notification per page).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from xds_server.authz.mcp.listing import ListRewrite, item_name, rewrite_list_response

DATA = Path(__file__).parent / "data"
SSE = "text/event-stream"
JSON = "application/json"
DEMO_TOOLS = ["list_issues", "get_issue", "create_issue", "delete_repo", "whoami"]


def body(name: str) -> bytes:
    return (DATA / name).read_bytes()


def content_type(name: str) -> str:
    return SSE if name.endswith(".sse") else JSON


def deny(*names: str):
    def keep(kind: str, item: Mapping[str, Any]) -> bool:
        return item_name(kind, item) not in names

    return keep


def keep_all(kind: str, item: Mapping[str, Any]) -> bool:
    return True


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Parse an SSE body the way a client does (CRLF/LF/CR, data lines joined): one dict per event."""
    text = raw.decode()
    events, current = [], {"data": []}
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if current["data"] or len(current) > 1:
                events.append({**current, "data": "\n".join(current["data"])})
            current = {"data": []}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            current["data"].append(value)
        else:
            current[name] = value
    return events


def messages(raw: bytes, ctype: str) -> list[Any]:
    if ctype == JSON:
        return [json.loads(raw)]
    return [json.loads(e["data"]) for e in sse_events(raw) if e["data"].strip()]


def only_response(raw: bytes, ctype: str) -> dict[str, Any]:
    [response] = [m for m in messages(raw, ctype) if "result" in m]
    return response


# --- the SDK's own bodies ---------------------------------------------------------------

TOOLS_FILES = [
    "demo-sse-modern-tools-list.json",
    "demo-sse-legacy-tools-list.sse",
    "demo-json-legacy-tools-list.json",
]


def test_fixture_framing_is_what_the_sdk_sends() -> None:
    # 2025-11-25 over SSE: one `event: message` event, CRLF line ends, no id.
    legacy = body("demo-sse-legacy-tools-list.sse")
    assert legacy.startswith(b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"tools":[')
    assert legacy.endswith(b"}}\r\n\r\n") and legacy.count(b"\r\n\r\n") == 1
    # 2026-07-28 answers plain JSON even from the SSE-mode server...
    assert body("demo-sse-modern-tools-list.json").startswith(b'{"jsonrpc":"2.0","id":1,"result":{')
    # ...and SSE once a notification goes first: two CRLF events, the response last.
    paged = body("paged-sse-modern-tools-list.sse")
    assert [json.loads(e["data"]).get("method") for e in sse_events(paged)] == ["notifications/progress", None]


@pytest.mark.parametrize("name", TOOLS_FILES)
def test_tools_list_filtered_in_every_format(name: str) -> None:
    ctype = content_type(name)
    out = rewrite_list_response(body(name), ctype, deny("delete_repo", "create_issue"))
    assert out.removed == ("create_issue", "delete_repo") and not out.parse_failed
    assert out.body is not None
    before, after = only_response(body(name), ctype), only_response(out.body, ctype)
    assert [t["name"] for t in after["result"]["tools"]] == ["list_issues", "get_issue", "whoami"]
    # Everything else is untouched: the id, the other result fields, the kept tools themselves.
    assert after["id"] == before["id"]
    assert {k: v for k, v in after["result"].items() if k != "tools"} == {
        k: v for k, v in before["result"].items() if k != "tools"
    }
    assert after["result"]["tools"][0] == before["result"]["tools"][0]


def test_sse_framing_kept_exactly() -> None:
    original = body("demo-sse-legacy-tools-list.sse")
    out = rewrite_list_response(original, SSE, deny("whoami")).body
    assert out is not None
    head, data, blank, end = out.split(b"\r\n")
    assert (head, blank, end) == (b"event: message", b"", b"")
    assert data.startswith(b"data: {") and b"whoami" not in data
    # The rewritten JSON is as compact as the SDK's, with the same key order.
    expected = json.loads(original.split(b"\r\n")[1][len(b"data: ") :])
    expected["result"]["tools"] = [t for t in expected["result"]["tools"] if t["name"] != "whoami"]
    assert data == b"data: " + json.dumps(expected, separators=(",", ":")).encode()


def test_paged_sse_keeps_the_notification_and_the_cursor() -> None:
    for name, cursor in (("paged-sse-modern-tools-list.sse", "4"), ("paged-sse-legacy-tools-list.sse", "2")):
        original = body(name)
        out = rewrite_list_response(original, SSE, deny("create_issue", "list_issues"))
        assert out.body is not None and out.removed
        first_event = original.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert out.body.startswith(first_event)  # the progress notification, byte for byte
        response = only_response(out.body, SSE)
        assert response["result"]["nextCursor"] == cursor
        assert "create_issue" not in out.body.decode() and "list_issues" not in out.body.decode()


@pytest.mark.parametrize(
    ("name", "kind", "drop", "left"),
    [
        ("demo-sse-modern-prompts-list.json", "prompts", "exfiltrate", ["summarize"]),
        ("demo-sse-legacy-prompts-list.sse", "prompts", "exfiltrate", ["summarize"]),
        ("demo-sse-modern-resources-list.json", "resources", "docs://secret", ["docs://readme"]),
        ("demo-json-legacy-resources-list.json", "resources", "docs://secret", ["docs://readme"]),
    ],
)
def test_prompts_and_resources(name: str, kind: str, drop: str, left: list[str]) -> None:
    seen: list[str] = []

    def keep(k: str, item: Mapping[str, Any]) -> bool:
        seen.append(k)
        return item_name(k, item) != drop

    out = rewrite_list_response(body(name), content_type(name), keep)
    assert set(seen) == {kind} and out.removed == (drop,)
    assert out.body is not None
    assert [item_name(kind, i) for i in only_response(out.body, content_type(name))["result"][kind]] == left


def test_resource_templates_by_uri_template() -> None:
    raw = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 4,
            "result": {
                "resourceTemplates": [
                    {"uriTemplate": "repo://{owner}/{name}", "name": "repo"},
                    {"uriTemplate": "secret://{key}", "name": "secret"},
                ],
                "nextCursor": "abc",
            },
        }
    ).encode()
    out = rewrite_list_response(raw, "application/json; charset=utf-8", deny("secret://{key}"))
    assert out.removed == ("secret://{key}",)
    assert out.body is not None
    result = json.loads(out.body)["result"]
    kept = [{"uriTemplate": "repo://{owner}/{name}", "name": "repo"}]
    assert result == {"resourceTemplates": kept, "nextCursor": "abc"}
    # The demo's empty template list: nothing to do.
    assert rewrite_list_response(body("demo-sse-legacy-resources-templates-list.sse"), SSE, deny("x")) == ListRewrite(
        None, (), False
    )


@pytest.mark.parametrize("name", TOOLS_FILES + ["paged-sse-modern-tools-list.sse"])
def test_nothing_removed_means_no_body(name: str) -> None:
    assert rewrite_list_response(body(name), content_type(name), keep_all) == ListRewrite(None, (), False)


def test_keep_sees_each_item_in_order() -> None:
    seen: list[tuple[str, str]] = []
    rewrite_list_response(body("demo-sse-legacy-tools-list.sse"), SSE, lambda k, i: seen.append((k, i["name"])) or True)
    assert seen == [("tools", n) for n in DEMO_TOOLS]


def test_item_name() -> None:
    assert item_name("tools", {"name": "a"}) == "a"
    assert item_name("prompts", {"name": "p"}) == "p"
    assert item_name("resources", {"uri": "docs://x", "name": "x"}) == "docs://x"
    assert item_name("resourceTemplates", {"uriTemplate": "t://{x}", "name": "t"}) == "t://{x}"
    assert item_name("tools", {"name": 3}) == "" and item_name("tools", "junk") == "" and item_name("tools", {}) == ""


# --- SSE framing the SDK may also produce, and what the spec allows ---------------------------


def list_response(*names: str, rid: int = 1, **extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": {"tools": [{"name": n, "inputSchema": {}} for n in names], **extra}}


def test_other_events_ids_comments_and_pings_kept() -> None:
    response = json.dumps(list_response("a", "b"), separators=(",", ":"))
    raw = (
        "id: ev-0\r\ndata: \r\nretry: 1000\r\n\r\n"  # an SDK priming event (event store configured)
        ": ping - 2026-11-21 17:03:42.000000+00:00\r\n\r\n"  # sse-starlette keepalive
        'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info"}}\r\n\r\n'
        ": ping\r\n\r\n"  # the 2026-07-28 transport's keepalive
        f"event: message\r\nid: ev-7\r\ndata: {response}\r\n: trailing comment\r\n\r\n"
    ).encode()
    out = rewrite_list_response(raw, SSE, deny("a"))
    assert out.removed == ("a",)
    assert out.body is not None
    kept = json.dumps(list_response("b"), separators=(",", ":"))
    assert out.body == raw.replace(response.encode(), kept.encode())


def test_multiline_data_joined_and_reemitted_as_one_line() -> None:
    pretty = json.dumps(list_response("a", "b", nextCursor="n1"), indent=2)
    raw = ("event: message\n" + "".join(f"data: {line}\n" for line in pretty.split("\n")) + "id: 9\n\n").encode()
    out = rewrite_list_response(raw, SSE, deny("b"))
    assert out.body is not None
    lines = out.body.decode().split("\n")
    assert lines[0] == "event: message"
    assert lines[1].startswith("data: {") and json.loads(lines[1][6:]) == list_response("a", nextCursor="n1")
    assert lines[2:] == ["id: 9", "", ""]


@pytest.mark.parametrize("eol", ["\n", "\r", "\r\n"])
def test_any_line_terminator(eol: str) -> None:
    data = json.dumps(list_response("a", "b"))
    raw = f":hello{eol}event:message{eol}data:{data}{eol}{eol}".encode()
    out = rewrite_list_response(raw, SSE, deny("a"))
    assert out.body is not None
    # "data:" with no space is valid SSE; the rewritten line uses "data: " and the same terminator.
    expected = f":hello{eol}event:message{eol}data: {json.dumps(list_response('b'), separators=(',', ':'))}{eol}{eol}"
    assert out.body.decode() == expected


def test_several_list_responses_and_unterminated_last_event() -> None:
    one = json.dumps(list_response("a", "b", rid=1))
    two = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"prompts": [{"name": "a"}, {"name": "p"}]}})
    raw = f"data: {one}\n\ndata: {two}".encode()  # no blank line after the last event
    out = rewrite_list_response(raw, SSE, deny("a"))
    assert out.removed == ("a", "a")
    assert out.body is not None
    first, second = out.body.decode().split("\n\n")
    assert json.loads(first[6:])["result"]["tools"] == [{"name": "b", "inputSchema": {}}]
    assert json.loads(second[6:])["result"]["prompts"] == [{"name": "p"}]


def test_bom_kept() -> None:
    raw = ("\ufeffdata: " + json.dumps(list_response("a", "b")) + "\n\n").encode()
    out = rewrite_list_response(raw, SSE, deny("a"))
    assert out.body is not None and out.body.startswith("\ufeffdata: {".encode())


def test_batch_json_body() -> None:
    raw = json.dumps([list_response("a", rid=1), list_response("a", "b", rid=2)]).encode()
    out = rewrite_list_response(raw, JSON, deny("a"))
    assert out.removed == ("a", "a")
    assert out.body is not None
    assert [r["result"]["tools"] for r in json.loads(out.body)] == [[], [{"name": "b", "inputSchema": {}}]]


# --- what is not a list response, and junk -------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "tools"}]}},  # tools/call
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}},
        {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
        {"jsonrpc": "2.0", "id": 1, "result": None},
    ],
)
def test_other_messages_untouched(message: dict[str, Any]) -> None:
    raw = json.dumps(message).encode()
    assert rewrite_list_response(raw, JSON, deny("a")) == ListRewrite(None, (), False)
    assert rewrite_list_response(b"data: " + raw + b"\n\n", SSE, deny("a")) == ListRewrite(None, (), False)


@pytest.mark.parametrize("method", [None, "tools/list", ""])
def test_a_response_that_also_has_a_method_is_not_passed_on_unfiltered(method: Any) -> None:
    # The MCP SDK reads {"method": null, "result": ...} as a response: it is not a request to let through.
    for extra in ({"result": {"tools": [{"name": "a"}]}}, {"error": {"code": 1, "message": "x"}}):
        raw = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, **extra}).encode()
        assert rewrite_list_response(raw, JSON, deny("a")).parse_failed
        assert rewrite_list_response(b"data: " + raw + b"\n\n", SSE, deny("a")).parse_failed


def test_non_object_items_removed_without_asking() -> None:
    asked: list[Any] = []
    raw = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}, "junk", 3, None]}}).encode()
    out = rewrite_list_response(raw, JSON, lambda k, i: asked.append(i) or True)
    assert asked == [{"name": "a"}]
    assert out.removed == ("", "", "")
    assert out.body is not None and json.loads(out.body)["result"]["tools"] == [{"name": "a"}]


@pytest.mark.parametrize(
    ("raw", "ctype"),
    [
        (b"", JSON),
        (b"not json", JSON),
        (b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": [', JSON),
        (b"\xff\xfe{}", JSON),
        (b'{"id": 1, "result": {"tools": [{"name": "a", "x": NaN}]}}', JSON),
        (b'{"id": 1, "result": {"tools": [{"name": "a", "x": 1e999}]}}', JSON),
        (b"[" * 100_000, JSON),
        (b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": {"name": "a"}}}', JSON),
        (b"data: {oops\n\n", SSE),
        (b"data: \xff\n\n", SSE),
        (b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}]}}', "text/html"),
        (b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}]}}', ""),
    ],
)
def test_junk_never_raises(raw: bytes, ctype: str) -> None:
    assert rewrite_list_response(raw, ctype, deny("a")) == ListRewrite(None, (), True)


def test_junk_event_does_not_stop_the_others() -> None:
    good = json.dumps(list_response("a", "b"))
    raw = f"data: {{oops\n\ndata: {good}\n\n".encode()
    out = rewrite_list_response(raw, SSE, deny("a"))
    assert out.parse_failed and out.removed == ("a",)
    assert out.body is not None and out.body.startswith(b"data: {oops\n\n")


def test_content_type_parameters_and_case() -> None:
    raw = json.dumps(list_response("a", "b")).encode()
    assert rewrite_list_response(raw, "Application/JSON; charset=UTF-8", deny("a")).removed == ("a",)
    sse = b"data: " + raw + b"\n\n"
    assert rewrite_list_response(sse, "text/event-stream;charset=utf-8", deny("a")).removed == ("a",)


def test_unicode_and_big_numbers_survive() -> None:
    raw = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 12345678901234567890123,
            "result": {
                "tools": [
                    {"name": "a"},
                    {"name": "b", "description": "café ☕ \u2028", "inputSchema": {"maximum": 1.5}},
                ]
            },
        },
        ensure_ascii=False,
    ).encode()
    out = rewrite_list_response(raw, JSON, deny("a"))
    assert out.body is not None
    message = json.loads(out.body)
    assert message["id"] == 12345678901234567890123
    [tool] = message["result"]["tools"]
    assert tool == {"name": "b", "description": "café ☕ \u2028", "inputSchema": {"maximum": 1.5}}
