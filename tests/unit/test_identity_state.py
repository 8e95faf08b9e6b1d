"""The policy service recognises callers and their users exactly as the RBAC principals do."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import json_format

from tests import ir_kit
from xds_server.authz.ext_proc import jwt_payloads, peer_uri_san
from xds_server.authz.mcp.access import has_unconditional_tool, may_use
from xds_server.authz.state import PolicyIndex
from xds_server.ir.types import (
    IR,
    AgentIR,
    ApiKeyPrincipal,
    GrantIR,
    HeaderPrincipal,
    JwtPrincipal,
    SecretIR,
    SpiffePrincipal,
    UserMatchIR,
)

MAINTAINERS = UserMatchIR(provider="corp", subjects=(), groups=("maintainers",), groups_claim="roles", claims=())
ALICE_IN_PLATFORM = UserMatchIR(provider="corp", subjects=("alice",), groups=(), groups_claim="groups",
                                claims=(("department", "platform"),))  # fmt: skip


def _grant(agent: str, tools: list[str], user: UserMatchIR | None = None, **kinds: list[str]) -> GrantIR:
    return ir_kit.grant(agent, tools, user, resources=kinds.get("resources", []), prompts=kinds.get("prompts", []))


def user_matches(user: UserMatchIR, payloads: dict[str, Any] | None) -> bool:
    return user.matches(payloads)


@pytest.fixture
def index() -> PolicyIndex:
    agents = (
        AgentIR("bot", (ApiKeyPrincipal("x-api-key", SecretIR("STATE_TEST_KEY", None, "sekret")),)),
        AgentIR("mesh", (SpiffePrincipal("spiffe://example.org/agent/mesh"),)),
        AgentIR("triage", (JwtPrincipal("agents", "azp", "triage-bot"), HeaderPrincipal("x-agent-id", "triage"))),
    )
    backend = ir_kit.route(
        "github",
        grants=(_grant("bot", ["whoami"]), _grant("triage", ["list_issues"], prompts=["summarize"]),
                _grant("triage", ["create_issue"], MAINTAINERS), _grant("triage", ["merge_*"], ALICE_IN_PLATFORM)),
    )  # fmt: skip
    return PolicyIndex.from_ir(IR((ir_kit.gateway(agents=agents, routes=(backend,)),)))


@pytest.mark.parametrize(
    "payloads, expected",
    [
        ({"corp": {"sub": "bob", "roles": ["staff", "maintainers"]}}, True),
        ({"corp": {"sub": "bob", "roles": "maintainers"}}, True),  # a single group as a string
        ({"corp": {"sub": "bob", "roles": ["staff"]}}, False),
        ({"corp": {"sub": "bob", "groups": ["maintainers"]}}, False),  # not the provider's groups claim
        ({"other": {"sub": "bob", "roles": ["maintainers"]}}, False),  # another provider's token
        ({}, False),
        (None, False),
    ],
)
def test_groups(payloads: dict[str, Any] | None, expected: bool) -> None:
    assert user_matches(MAINTAINERS, payloads) is expected


def test_subjects_and_claims_must_all_hold() -> None:
    assert user_matches(ALICE_IN_PLATFORM, {"corp": {"sub": "alice", "department": "platform"}})
    assert not user_matches(ALICE_IN_PLATFORM, {"corp": {"sub": "alice", "department": "sales"}})
    assert not user_matches(ALICE_IN_PLATFORM, {"corp": {"sub": "mallory", "department": "platform"}})
    assert not user_matches(ALICE_IN_PLATFORM, {"corp": {"sub": "alice", "department": ["platform"]}})


def test_callers_are_recognised_by_every_source(index: PolicyIndex) -> None:
    view = index.route("github")
    assert view is not None
    assert view.agents_of({"x-agent-id": "triage"}) == ("triage",)
    assert view.agents_of({}, {"agents": {"azp": "triage-bot"}}) == ("triage",)
    assert view.agents_of({}, {"corp": {"azp": "triage-bot"}}) == ()  # a claim of another provider proves nothing
    assert view.agents_of({"x-api-key": "sekret"}) == ("bot",)
    assert view.agents_of({"x-api-key": "guess"}) == ()
    assert view.agents_of({}, None, "spiffe://example.org/agent/mesh") == ("mesh",)
    assert view.agents_of({"x-api-key": "sekret", "x-agent-id": "triage"}) == ("bot", "triage")
    assert view.agent_of({"x-agent-id": "nobody"}) is None


def test_users_grants_count_only_for_their_users(index: PolicyIndex) -> None:
    view = index.route("github")
    assert view is not None
    maintainer = {"corp": {"sub": "bob", "roles": ["maintainers"]}}
    alice = {"corp": {"sub": "alice", "department": "platform"}}
    assert may_use(view, "triage", "tools", "list_issues")
    assert not may_use(view, "triage", "tools", "create_issue")
    assert may_use(view, "triage", "tools", "create_issue", maintainer)
    assert not may_use(view, "triage", "tools", "merge_pr", maintainer)
    assert may_use(view, "triage", "tools", "merge_pr", alice)
    assert may_use(view, "triage", "prompts", "summarize", alice)
    assert has_unconditional_tool(view, "triage", "create_issue", maintainer)
    assert not has_unconditional_tool(view, "triage", "create_issue")
    plain = view.grant("triage")
    assert plain is not None and plain.user is None  # the grant for whoever the user is


def test_ext_proc_reads_the_verified_payloads_and_the_peer_certificate() -> None:
    request = pb.ProcessingRequest()
    json_format.ParseDict({"corp": {"sub": "bob", "roles": ["maintainers"], "exp": 1.7e9}},
                          request.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"])  # fmt: skip
    request.attributes["envoy.filters.http.ext_proc"].fields[
        "connection.uri_san_peer_certificate"
    ].string_value = "spiffe://x/y"
    assert jwt_payloads(request) == {"corp": {"sub": "bob", "roles": ["maintainers"], "exp": 1.7e9}}
    assert peer_uri_san(request) == "spiffe://x/y"
    assert jwt_payloads(pb.ProcessingRequest()) == {} and peer_uri_san(pb.ProcessingRequest()) is None


def test_the_anonymous_principal_matches_only_a_caller_with_no_credential_at_all() -> None:
    from xds_server.ir.principals import AnonymousPrincipal, Caller

    anonymous = AnonymousPrincipal(("authorization", "x-agent-id", "x-api-key"), certificates=True)
    assert anonymous.matches(Caller({"user-agent": "inspector"}))
    assert not anonymous.matches(Caller({"x-agent-id": ""}))  # present, even empty
    assert not anonymous.matches(Caller({"authorization": "Bearer x"}))
    assert not anonymous.matches(Caller({}, jwt={"corp": {"sub": "alice"}}))
    assert not anonymous.matches(Caller({}, peer_uri_san="spiffe://example.org/agent/x"))
    assert AnonymousPrincipal(("x-api-key",), certificates=False).matches(Caller({}, peer_uri_san="spiffe://x/y"))


def test_looking_agents_up_agrees_with_trying_every_principal() -> None:
    """AgentFinder (a lookup by the values a caller presents) against the principals' own checks in
    agent order, over random agents sharing values and random callers, claims of every JSON type
    included."""
    import random

    from xds_server.authz.state import AgentFinder
    from xds_server.ir.principals import AnonymousPrincipal, Caller

    rnd = random.Random(10)
    values = ["a", "b", "c", "1", ""]

    def principal() -> Any:
        kind = rnd.choice(["header", "jwt", "spiffe", "apikey"])
        if kind == "header":
            return HeaderPrincipal(rnd.choice(["x-agent-id", "x-other"]), rnd.choice(values))
        if kind == "jwt":
            return JwtPrincipal(rnd.choice(["agents", "corp"]), rnd.choice(["azp", "sub"]), rnd.choice(values))
        if kind == "spiffe":
            return SpiffePrincipal(f"spiffe://x/{rnd.choice(values)}")
        return ApiKeyPrincipal("x-api-key", SecretIR("K", None, rnd.choice(values)))

    def claim() -> Any:
        return rnd.choice([*values, 1, True, None, ["a"], {"a": "a"}])

    for _ in range(200):
        anonymous = AnonymousPrincipal(("x-agent-id", "x-api-key"), certificates=rnd.random() < 0.5)
        agents = tuple(AgentIR(f"agent{rnd.randint(0, 5)}",  # names repeat sometimes
                               tuple(principal() for _ in range(rnd.randint(0, 3)))
                               + ((anonymous,) if rnd.random() < 0.15 else ()))
                       for i in range(rnd.randint(1, 8)))  # fmt: skip
        finder = AgentFinder(agents)
        for _ in range(30):
            headers = {h: rnd.choice(values) for h in ("x-agent-id", "x-other", "x-api-key") if rnd.random() < 0.4}
            jwt = {p: {c: claim() for c in ("azp", "sub") if rnd.random() < 0.6}
                   for p in ("agents", "corp") if rnd.random() < 0.4}  # fmt: skip
            if rnd.random() < 0.1:
                jwt["agents"] = "not an object"  # type: ignore[assignment]
            peer = f"spiffe://x/{rnd.choice(values)}" if rnd.random() < 0.3 else None
            caller = Caller(headers, jwt, peer)
            expected = tuple(a.name for a in agents if any(p.matches(caller) for p in a.principals))
            assert finder.agents_of(caller) == expected, (agents, caller)


def test_a_principal_value_that_is_not_a_string_is_refused_when_the_index_is_built() -> None:
    from xds_server.authz.state import AgentFinder

    with pytest.raises(TypeError, match="must be a string"):
        AgentFinder((AgentIR("bot", (JwtPrincipal("agents", "azp", 1),)),))  # type: ignore[arg-type]


def test_a_decision_reads_only_the_rules_naming_its_agent() -> None:
    from xds_server.ir.types import ConditionalRuleIR

    rules = tuple(ConditionalRuleIR(f"r{i}", agents, ("*",), "true", None, False, 0)
                  for i, agents in enumerate([("a", "b"), ("b",), ("a", "a"), ("c",)]))  # fmt: skip
    route = ir_kit.route("github", grants=(), conditional_rules=rules)
    view = PolicyIndex.from_ir(IR((ir_kit.gateway(agents=(), routes=(route,)),))).route("github")
    assert view is not None
    assert [r.id for r in view.conditional_rules_for("a")] == ["r0", "r2"]  # in policy order, once each
    assert [r.id for r in view.conditional_rules_for("b")] == ["r0", "r1"]
    assert view.conditional_rules_for("nobody") == ()
