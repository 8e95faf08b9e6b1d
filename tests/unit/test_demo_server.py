"""The demo MCP server as a subprocess, spoken to directly by the official SDK client in both modes."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import McpBackend, mcp_client, raw_post

MODES = ["modern", "legacy"]


@pytest.fixture(scope="module")
def backend(mcp_backend_factory_module) -> McpBackend:
    return mcp_backend_factory_module("demo-github")


def _text(result) -> str:
    (content,) = result.content
    return content.text


@pytest.mark.parametrize("mode", MODES)
async def test_tools_resources_prompts(backend: McpBackend, mode: str) -> None:
    async with mcp_client(backend.url, {"x-agent": "triage"}, mode=mode) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "modern" else "2025-11-25")
        tools = await client.list_tools()
        assert [t.name for t in tools.tools] == [
            "list_issues", "get_issue", "create_issue", "delete_repo", "whoami", "build_report"]  # fmt: skip
        assert (
            _text(await client.call_tool("list_issues", {"repo": "acme/web"}))
            == "issues of acme/web: #1 bug, #2 feature"
        )
        assert _text(await client.call_tool("get_issue", {"repo": "acme/web", "number": 7})) == "issue acme/web#7: bug"
        assert _text(await client.call_tool("create_issue", {"repo": "acme/web", "title": "t"})) == (
            "created issue in acme/web: t"
        )
        assert _text(await client.call_tool("delete_repo", {"repo": "acme/web"})) == "deleted acme/web"
        assert _text(await client.call_tool("whoami", {})) == "server demo-github"
        # Without a task (legacy: no params.task; modern: the extension not declared), a plain result.
        assert (
            _text(await client.call_tool("build_report", {"repo": "acme/web"})) == "report of acme/web: 2 open issues"
        )

        resources = await client.list_resources()
        assert sorted(str(r.uri) for r in resources.resources) == ["docs://readme", "docs://secret"]
        readme = await client.read_resource("docs://readme")
        assert readme.contents[0].text.startswith("Demo GitHub MCP server")
        secret = await client.read_resource("docs://secret")
        assert "hunter2" in secret.contents[0].text

        prompts = await client.list_prompts()
        assert sorted(p.name for p in prompts.prompts) == ["exfiltrate", "summarize"]
        prompt = await client.get_prompt("summarize", {"text": "hello"})
        assert prompt.messages[0].content.text == "Summarize: hello"


@pytest.mark.parametrize("mode", MODES)
async def test_request_log_sees_headers_bodies_and_sessions(backend: McpBackend, mode: str) -> None:
    backend.clear_requests()
    async with mcp_client(backend.url, {"x-agent": "triage", "authorization": "Bearer t"}, mode=mode) as client:
        await client.call_tool("whoami", {})
    requests = backend.requests()
    assert requests, "the request log is empty"
    assert all(r["headers"].get("x-agent") == "triage" for r in requests)
    assert all(r["headers"].get("authorization") == "Bearer t" for r in requests)
    methods = backend.rpc_methods()
    assert "tools/call" in methods
    call = next(r for r in requests if r["body"] and json.loads(r["body"]).get("method") == "tools/call")
    assert json.loads(call["body"])["params"]["name"] == "whoami"
    assert call["path"] == "/mcp" and call["method"] == "POST"
    if mode == "modern":
        assert methods[0] == "server/discover"
        assert call["headers"]["mcp-method"] == "tools/call" and call["headers"]["mcp-name"] == "whoami"
        assert not any("mcp-session-id" in r["headers"] for r in requests)
    else:
        assert methods[0] == "initialize"
        assert call["headers"]["mcp-session-id"]
        assert requests[-1]["method"] == "DELETE"  # the client ends its session on close


async def test_malformed_body_is_logged_before_the_app_rejects_it(backend: McpBackend) -> None:
    backend.clear_requests()
    response = await raw_post(backend.url, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert response.status_code == 400
    (logged,) = backend.requests()
    assert logged["body"] == '{"jsonrpc": "2.0", "id": 1, "method": '
    assert logged["headers"]["content-type"] == "application/json"


async def test_two_backends_are_told_apart(mcp_backend_factory) -> None:
    one = mcp_backend_factory("one")
    two = mcp_backend_factory("two", json_response=True)
    assert one.port != two.port
    for backend in (one, two):
        async with mcp_client(backend.url) as client:
            assert _text(await client.call_tool("whoami", {})) == f"server {backend.name}"
    two.stop()
    assert not two.process.running()
