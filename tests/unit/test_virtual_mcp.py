"""Virtual MCP servers: naming and curation of merged lists, sealed sessions, and the policy checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xds_server.authz.sealing import Sealer
from xds_server.authz.vmcp.naming import catalog_of, origin_by_name
from xds_server.authz.vmcp.sessions import open_session, scope_of, seal_session
from xds_server.authz.vmcp.upstream import MemberSession, messages_of
from xds_server.ir.build import build_ir
from xds_server.ir.glob import compile_globs
from xds_server.ir.types import UpstreamIR
from xds_server.ir.virtual_mcp import VirtualMemberIR, VirtualServerIR
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_directory


def virtual(mode: str = "always", *, include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = (),
            renames: tuple[tuple[str, str], ...] = (), descriptions: tuple[tuple[str, str], ...] = ()) -> VirtualServerIR:  # fmt: skip
    members = tuple(VirtualMemberIR(b, p, ("2026-07-28",), UpstreamIR((), "/mcp", 1000))
                    for b, p in (("github", "gh"), ("jira", "jira")))  # fmt: skip
    return VirtualServerIR("work", "__", mode, members, compile_globs(include), compile_globs(exclude), renames,
                           descriptions, 1000, 0)  # fmt: skip


def tools(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "description": f"{n} does things", "inputSchema": {"type": "object"}} for n in names]


LISTS = {"tools": {"github": tools("whoami", "create_issue"), "jira": tools("whoami", "list_issues")}}


def visible(catalog: Any) -> list[str]:
    return [t["name"] for t in catalog.items["tools"]]


def test_always_prefixes_every_name() -> None:
    catalog = catalog_of(virtual(), LISTS)
    assert visible(catalog) == ["gh__whoami", "gh__create_issue", "jira__whoami", "jira__list_issues"]
    assert catalog.tools["gh__whoami"].backend == "github" and catalog.tools["gh__whoami"].name == "whoami"
    assert catalog.hidden == []


def test_on_conflict_prefixes_only_shared_names() -> None:
    catalog = catalog_of(virtual("onConflict"), LISTS)
    assert visible(catalog) == ["gh__whoami", "create_issue", "jira__whoami", "list_issues"]
    assert catalog.tools["list_issues"].backend == "jira"


def test_never_hides_and_reports_shared_names() -> None:
    catalog = catalog_of(virtual("never"), LISTS)
    assert visible(catalog) == ["create_issue", "list_issues"]
    assert len(catalog.hidden) == 2 and all("whoami" in h and "naming mode never" in h for h in catalog.hidden)
    assert "whoami" not in catalog.tools


def test_curation_in_order_include_exclude_rename_describe() -> None:
    catalog = catalog_of(virtual(include=("gh__*", "jira__whoami"), exclude=("*create*",),
                                 renames=(("jira__whoami", "who_is_jira"),),
                                 descriptions=(("who_is_jira", "Which Jira."),)), LISTS)  # fmt: skip
    assert visible(catalog) == ["gh__whoami", "who_is_jira"]
    assert catalog.items["tools"][1]["description"] == "Which Jira."
    assert catalog.tools["who_is_jira"].backend == "jira" and catalog.tools["who_is_jira"].name == "whoami"
    assert "jira__whoami" not in catalog.tools  # renamed away: its old name routes nowhere


def test_a_name_two_items_would_share_goes_to_the_first_member() -> None:
    catalog = catalog_of(virtual(renames=(("jira__whoami", "gh__whoami"),)), LISTS)
    assert catalog.tools["gh__whoami"].backend == "github"
    assert any("already that of backend 'github'" in h for h in catalog.hidden)


def test_members_not_answering_are_left_out() -> None:
    catalog = catalog_of(virtual(), {"tools": {"jira": tools("whoami")}}, ["github"])
    assert visible(catalog) == ["jira__whoami"] and catalog.missing == ("github",)


def test_resources_route_by_uri_then_by_template() -> None:
    lists = {"resources": {"github": [{"uri": "docs://readme"}], "jira": [{"uri": "docs://readme"}, {"uri": "jira://a"}]},
             "resourceTemplates": {"jira": [{"uriTemplate": "jira://issues/{id}"}], "github": [{"uriTemplate": "gh://{x}"}]}}  # fmt: skip
    catalog = catalog_of(virtual(), lists)
    assert catalog.resource_backend("docs://readme") == "github"  # listed by both: the first member's
    assert catalog.resource_backend("jira://a") == "jira"
    assert catalog.resource_backend("jira://issues/7") == "jira"
    assert catalog.resource_backend("gh://anything") == "github"
    assert catalog.resource_backend("nowhere://x") is None


def test_sessions_open_only_where_sealed_and_unaltered() -> None:
    key = b"k" * 32
    scope = scope_of("main", "work")
    held = {
        "jira": MemberSession("http://10.0.0.2:80/mcp", "abc"),
        "github": MemberSession("http://10.0.0.1:80/mcp", "def"),
    }
    sealed = seal_session(Sealer(key), scope, held)
    # Any replica with the key opens it: nothing is kept anywhere but in the id.
    assert open_session(Sealer(key), scope, sealed) == held
    assert open_session(Sealer(key), scope_of("main", "other"), sealed) is None
    assert open_session(Sealer(b"x" * 32), scope, sealed) is None
    assert open_session(Sealer(key), scope, sealed[:-1] + ("A" if sealed[-1] != "A" else "B")) is None
    assert open_session(Sealer(key), scope, "t1.e30.AAAAAAAAAAAAAAAAAAAAAA") is None


POLICIES = """\
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {name: main}
spec: {listen: {address: 127.0.0.1, port: 10000}}
---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: github}
spec: {endpoints: [{host: 127.0.0.1, port: 9001}]}
---
apiVersion: agentxds.dev/v1
kind: VirtualMCPServer
metadata: {name: work}
spec:
  backends: BACKENDS
"""


def errors_of(tmp_path: Path, backends: str, extra: str = "") -> str:
    (tmp_path / "all.yaml").write_text(POLICIES.replace("BACKENDS", backends) + extra)
    try:
        build_ir(load_directory(tmp_path))
    except PolicyError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize(("backends", "message"), [
    ("[{backend: github}, {backend: github}]", "a backend is listed twice"),
    ("[{backend: github}, {backend: jira, prefix: github}]", "two backends have the same prefix"),
    ("[{backend: nope}]", "unknown backend 'nope'"),
    ("[{backend: work}]", "virtual servers do not nest"),
    ("[{backend: github, prefix: a}, {backend: jira, prefix: a__b}]", "overlap"),
])  # fmt: skip
def test_members_are_checked(tmp_path: Path, backends: str, message: str) -> None:
    assert message in errors_of(tmp_path, backends)


def test_a_virtual_server_and_a_backend_cannot_share_a_name(tmp_path: Path) -> None:
    extra = "---\napiVersion: agentxds.dev/v1\nkind: MCPBackend\nmetadata: {name: work}\nspec: {endpoints: [{host: 127.0.0.1, port: 1}]}\n"
    assert "name 'work' is already used by VirtualMCPServer/work" in errors_of(tmp_path, "[{backend: github}]", extra)


def test_a_member_with_user_tokens_is_refused(tmp_path: Path) -> None:
    text = POLICIES.replace("BACKENDS", "[{backend: github}]").replace(
        "spec: {endpoints: [{host: 127.0.0.1, port: 9001}]}",
        "spec: {endpoints: [{host: 127.0.0.1, port: 9001}], auth: {provider: idp}}",
    ).replace("spec: {listen: {address: 127.0.0.1, port: 10000}}", "spec:\n  listen: {address: 127.0.0.1, port: 10000}\n"
              "  identity: {jwtProviders: [{name: idp, issuer: https://idp, jwks: {inline: '{\"keys\": []}'}}]}")  # fmt: skip
    (tmp_path / "all.yaml").write_text(text)
    with pytest.raises(PolicyError, match="does not pass on yet"):
        build_ir(load_directory(tmp_path))


def test_always_names_say_where_they_come_from_as_the_lists_do() -> None:
    server = virtual(exclude=("*create*",), renames=(("jira__whoami", "who_is_jira"),))
    catalog = catalog_of(server, LISTS)
    for name in (
        "gh__whoami",
        "gh__create_issue",
        "jira__whoami",
        "who_is_jira",
        "jira__list_issues",
        "gh__",
        "nobody__whoami",
        "whoami",
    ):
        assert origin_by_name(server, "tool", name) == catalog.tools.get(name), name


def test_a_new_name_may_not_look_prefixed(tmp_path: Path) -> None:
    text = "[{backend: github}]\n  tools: {rename: {github__a: github__b}}"
    assert "starts like a backend's prefixed names" in errors_of(tmp_path, text)


def test_sse_lines_end_only_at_cr_or_lf() -> None:
    body = 'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"d":"a\u2028b\x85c"}}\n\n'
    assert messages_of("text/event-stream", body) == [{"jsonrpc": "2.0", "id": 1, "result": {"d": "a\u2028b\x85c"}}]
