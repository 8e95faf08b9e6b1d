"""Policy loading: defaults, and every error class with its file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from xds_server.policy.base import duration_ms
from xds_server.policy.diagnostics import Diagnostic, PolicyError
from xds_server.policy.load import PolicySet, load_directory, load_texts

HEAD = "apiVersion: agentxds.dev/v1\n"

GATEWAY = HEAD + textwrap.dedent("""\
    kind: Gateway
    metadata: {name: default}
    spec:
      listen: {port: 10000}
      identity: {trustedHeader: x-agent-id}
""")
BACKEND = HEAD + textwrap.dedent("""\
    kind: MCPBackend
    metadata: {name: github}
    spec:
      endpoints:
        - {host: github-mcp.internal, port: 8080}
""")
AGENTS = HEAD + textwrap.dedent("""\
    kind: Agent
    metadata: {name: triage}
    spec:
      identity: {header: triage}
    ---
    apiVersion: agentxds.dev/v1
    kind: Agent
    metadata: {name: executor}
    spec:
      description: merges things
      identity: {header: executor}
""")
POLICY = HEAD + textwrap.dedent("""\
    kind: MCPPolicy
    metadata: {name: github-triage}
    spec:
      backend: github
      rules:
        - agents: [triage]
          tools: [list_issues, "get_*"]
        - agents: ["*"]
          resources: ["file:///docs/*"]
          prompts: [summarize]
""")
BASE = {"gateway.yaml": GATEWAY, "backends/github.yaml": BACKEND, "agents.yaml": AGENTS, "policy.yaml": POLICY}


def doc(text: str) -> str:
    """A document body after the common apiVersion line."""
    return HEAD + textwrap.dedent(text)


def errors(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_texts(files)
    return [str(d) for d in info.value.diagnostics]


def test_valid_multi_file_set_loads_with_defaults() -> None:
    policies = load_texts(BASE)
    assert [g.name for g in policies.gateways] == ["default"]
    assert [a.name for a in policies.agents] == ["executor", "triage"]  # sorted by name
    gateway = policies.gateways[0].doc.spec
    assert (gateway.listen.address, gateway.listen.port) == ("127.0.0.1", 10000)
    assert gateway.identity.trusted_header == "x-agent-id"
    assert (gateway.limits.max_request_body_bytes, gateway.limits.connection_buffer_bytes) == (65536, 1048576)
    backend = policies.backends[0]
    assert backend.doc.route_path == "/mcp/github"
    assert backend.doc.spec.path == "/mcp"
    assert (backend.doc.spec.timeouts.connect_ms, backend.doc.spec.timeouts.request_ms) == (5000, 0)
    assert policies.gateway_of(backend) == "default"
    assert policies.backends_of("default") == (backend,)
    rules = policies.policies_for("github")[0].doc.spec.rules
    assert rules[0].tools == ("list_issues", "get_*") and rules[0].resources == ()
    assert rules[1].agents == ("*",) and rules[1].prompts == ("summarize",)
    assert str(backend.source) == "backends/github.yaml:1"
    assert str(policies.agent("executor").source) == "agents.yaml:7"  # second document in its file


def test_explicit_values_override_defaults() -> None:
    gateway = GATEWAY.replace(
        "listen: {port: 10000}",
        "listen: {address: '::1', port: 1}\n  limits: {maxRequestBodyBytes: 10485760, connectionBufferBytes: 10485760}",
    )
    backend = BACKEND + "  route: /tools/gh\n  path: /rpc\n  timeouts: {connect: 250ms, request: 1.5m}\n"
    policies = load_texts({**BASE, "gateway.yaml": gateway, "backends/github.yaml": backend})
    spec = policies.backends[0].doc.spec
    assert policies.backends[0].doc.route_path == "/tools/gh" and spec.path == "/rpc"
    assert (spec.timeouts.connect_ms, spec.timeouts.request_ms) == (250, 90_000)
    assert policies.gateways[0].doc.spec.listen.address == "::1"


@pytest.mark.parametrize(
    ("written", "loaded"), [("off", "off"), ('"off"', "off"), ("flag", "flag"), ("block", "block")]
)
def test_screening_off_unquoted_is_off_not_a_yaml_boolean(written: str, loaded: str) -> None:
    backend = BACKEND + f"  toolGuard: {{screening: {written}, unpinned: hide, refresh: 30s}}\n"
    spec = load_texts({**BASE, "backends/github.yaml": backend}).backends[0].doc.spec
    assert spec.tool_guard is not None and spec.tool_guard.screening == loaded


def test_screening_on_is_refused_with_its_line() -> None:
    backend = BACKEND + "  toolGuard: {screening: on}\n"
    assert errors({**BASE, "backends/github.yaml": backend}) == [
        "backends/github.yaml:7: MCPBackend/github spec.toolGuard.screening: must be 'off', 'flag' or 'block', got true"
    ]


@pytest.mark.parametrize(
    ("text", "ms"), [("0s", 0), ("250ms", 250), ("5s", 5000), ("1.5m", 90_000), ("2h", 7_200_000), ("0.25s", 250)]
)
def test_duration_ms(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["5", "5 s", "-1s", "1d", "0.5ms", "s", ""])
def test_duration_ms_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        duration_ms(text)


def test_unknown_agent_message_is_exact() -> None:
    policy = POLICY.replace("agents: [triage]", "agents: [triage, tirage]")
    assert errors({**BASE, "policies/github.yaml": policy, "policy.yaml": ""}) == [
        "policies/github.yaml:7: MCPPolicy/github-triage spec.rules[0].agents[1]: "
        "unknown agent 'tirage' (known: executor, triage)"
    ]


def test_diagnostic_fields() -> None:
    policy = POLICY.replace("agents: [triage]", "agents: [nobody]")
    with pytest.raises(PolicyError) as info:
        load_texts({**BASE, "policy.yaml": policy})
    assert info.value.diagnostics == (
        Diagnostic(
            "policy.yaml",
            7,
            "MCPPolicy/github-triage spec.rules[0].agents[0]",
            "unknown agent 'nobody' (known: executor, triage)",
        ),
    )


def test_yaml_syntax_error_is_reported_on_the_line_to_fix() -> None:
    # The missing `]` is on line 3, though the parser notices it at the end of the file.
    assert errors({**BASE, "broken.yaml": "kind: Agent\nmetadata:\n  name: [x\n"}) == [
        "broken.yaml:3: YAML syntax error: while parsing a flow sequence (opened at column 9): expected ',' or "
        "']', but got '<stream end>' on line 4, column 1"
    ]
    unclosed = "kind: MCPPolicy\nspec:\n  rules:\n    - tools: [a, b\n      agents: [x]\n"
    assert errors({**BASE, "policy.yaml": unclosed})[0].startswith(
        "policy.yaml:4: YAML syntax error: while parsing a flow sequence (opened at column 14): "
    )


def test_other_yaml_syntax_errors_keep_the_line_and_column_of_the_problem() -> None:
    assert errors({**BASE, "broken.yaml": "kind: Agent\nmetadata:\n  name: x\n bad: y\n"}) == [
        "broken.yaml:4: YAML syntax error (column 2): while parsing a block mapping: expected <block end>, but found "
        "'<block mapping start>'"
    ]


def test_unknown_field_reports_its_own_line() -> None:
    backend = BACKEND + "  timeouts:\n    conect: 1s\n"
    assert errors({**BASE, "backends/github.yaml": backend}) == [
        "backends/github.yaml:8: MCPBackend/github spec.timeouts.conect: unknown field 'conect' "
        "(did you mean 'connect'?)"
    ]


def test_snake_case_keys_are_unknown_in_yaml() -> None:
    gateway = GATEWAY.replace("trustedHeader", "trusted_header")
    (message,) = errors({**BASE, "gateway.yaml": gateway})
    assert message.startswith("gateway.yaml:6: Gateway/default spec.identity.trusted_header: unknown field")


def test_missing_field_points_at_enclosing_mapping() -> None:
    gateway = GATEWAY.replace("listen: {port: 10000}", "listen:\n    address: 127.0.0.2")
    assert errors({**BASE, "gateway.yaml": gateway}) == [
        "gateway.yaml:5: Gateway/default spec.listen.port: missing required field 'port'"
    ]


def test_wrong_type_and_range() -> None:
    backend = BACKEND.replace("port: 8080", "port: 0").replace("github-mcp.internal", "bad host")
    assert errors({**BASE, "backends/github.yaml": backend}) == [
        "backends/github.yaml:6: MCPBackend/github spec.endpoints[0].host: "
        "'bad host' is neither an IP address nor a DNS name",
        "backends/github.yaml:6: MCPBackend/github spec.endpoints[0].port: must be at least 1, got 0",
    ]


def test_unknown_kind_and_api_version() -> None:
    odd = (
        "apiVersion: agentxds.dev/v2\nkind: Agent\nmetadata: {name: x}\nspec: {identity: {header: x}}\n"
        "---\napiVersion: agentxds.dev/v1\nkind: Agnet\n"
    )
    assert errors({**BASE, "odd.yaml": odd}) == [
        "odd.yaml:1: Agent/x apiVersion: must be 'agentxds.dev/v1', got 'agentxds.dev/v2'",
        "odd.yaml:7: kind: unknown kind 'Agnet' (expected one of: A2AAgent, A2APolicy, Agent, Gateway, MCPBackend, MCPPolicy, MCPToolLock, VirtualMCPServer)",
    ]
    assert errors({**BASE, "odd.yaml": "kind: [Agent]\n---\nmetadata: {name: x}\n"}) == [
        "odd.yaml:1: kind: unknown kind ['Agent'] (expected one of: A2AAgent, A2APolicy, Agent, Gateway, MCPBackend, MCPPolicy, MCPToolLock, VirtualMCPServer)",
        "odd.yaml:3: kind: missing required field 'kind' (one of: A2AAgent, A2APolicy, Agent, Gateway, MCPBackend, MCPPolicy, MCPToolLock, VirtualMCPServer)",
    ]


def test_rule_must_grant_something() -> None:
    policy = POLICY.replace(
        '      resources: ["file:///docs/*"]\n      prompts: [summarize]\n', "      description: forgot what\n"
    )
    assert errors({**BASE, "policy.yaml": policy}) == [
        "policy.yaml:9: MCPPolicy/github-triage spec.rules[1]: "
        "a rule must grant at least one of tools, resources, prompts"
    ]


def test_glob_and_quoting_errors() -> None:
    policy = POLICY.replace('[list_issues, "get_*"]', '[list_issues, "get issue", on, ""]')
    assert errors({**BASE, "policy.yaml": policy}) == [
        "policy.yaml:8: MCPPolicy/github-triage spec.rules[0].tools[1]: "
        "must be a non-empty glob without whitespace or control characters, got 'get issue'",
        "policy.yaml:8: MCPPolicy/github-triage spec.rules[0].tools[2]: "
        "must be a string, got true (quote it to make it a string)",
        "policy.yaml:8: MCPPolicy/github-triage spec.rules[0].tools[3]: "
        "must be a non-empty glob without whitespace or control characters",
    ]


def test_limits_conflict_is_reported_on_max_request_body_bytes() -> None:
    gateway = GATEWAY + "  limits:\n    maxRequestBodyBytes: 200000\n    connectionBufferBytes: 100000\n"
    assert errors({**BASE, "gateway.yaml": gateway}) == [
        "gateway.yaml:8: Gateway/default spec.limits.maxRequestBodyBytes: "
        "maxRequestBodyBytes (200000) exceeds connectionBufferBytes (100000)"
    ]


def test_a_receive_timeout_shorter_than_the_headers_timeout_is_refused() -> None:
    gateway = GATEWAY + "  limits:\n    requestHeadersTimeout: 10s\n    requestReceiveTimeout: 5s\n"
    assert errors({**BASE, "gateway.yaml": gateway}) == [
        "gateway.yaml:9: Gateway/default spec.limits.requestReceiveTimeout: requestReceiveTimeout (5s) is shorter "
        "than requestHeadersTimeout (10s): the whole request includes its headers, so the headers limit could "
        "never apply"
    ]
    off = GATEWAY + "  limits:\n    requestHeadersTimeout: 10s\n    requestReceiveTimeout: 0s\n"
    (loaded,) = load_texts({**BASE, "gateway.yaml": off}).gateways
    assert loaded.doc.spec.limits.request_receive_timeout == "0s"  # off: no conflict


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("maxHeaders", "0", "must be at least 1"),
        ("maxHeaders", "20000", "must be at most 10000"),
        ("maxRequestHeadersKib", "9000", "must be at most 8192"),
        ("maxConnections", "0", "must be at least 1"),
        ("connectionIdleTimeout", "soon", "must be a duration such as 500ms"),
    ],
)
def test_header_and_connection_limits_are_range_checked(field: str, value: str, message: str) -> None:
    gateway = GATEWAY + f"  limits:\n    {field}: {value}\n"
    (error,) = errors({**BASE, "gateway.yaml": gateway})
    assert error.startswith(f"gateway.yaml:8: Gateway/default spec.limits.{field}: ") and message in error, error


def test_ext_authz_over_http_carries_jwt_identities() -> None:
    gateway = GATEWAY.replace("  identity: {trustedHeader: x-agent-id}\n", "") + (
        "  policyService: {extAuthz: http}\n"
        "  identity:\n"
        "    jwtProviders:\n"
        "      - {name: corp, issuer: 'https://idp.test', jwks: {inline: '{\"keys\": []}'}}\n"
    )
    policy_set = load_texts({**BASE, "gateway.yaml": gateway})
    assert policy_set.gateways[0].doc.spec.policy_service.ext_authz == "http"


def test_the_verified_identity_headers_are_reserved() -> None:
    gateway = GATEWAY.replace("trustedHeader: x-agent-id", "trustedHeader: X-Agentxds-Verified-Jwt-Corp")
    assert errors({**BASE, "gateway.yaml": gateway}) == [
        "gateway.yaml:6: Gateway/default spec.identity: x-agentxds-verified-jwt-corp: headers starting with "
        "x-agentxds-verified- are the gateway's own; pick another name"
    ]


def test_ext_authz_over_http_is_accepted_with_header_identity() -> None:
    gateway = GATEWAY + "  policyService: {extAuthz: http, extAuthzHttpPort: 18013}\n"
    policy_set = load_texts({**BASE, "gateway.yaml": gateway})
    service = policy_set.gateways[0].doc.spec.policy_service
    assert (service.ext_authz, service.ext_authz_http_port, service.port) == ("http", 18013, 18001)


def test_duplicate_name_points_at_first() -> None:
    again = AGENTS.split("---\n")[0].replace("header: triage", "header: other")
    assert errors({**BASE, "zz.yaml": again}) == [
        "zz.yaml:3: Agent/triage metadata.name: duplicate Agent 'triage' (first defined at agents.yaml:3)"
    ]


def test_unknown_backend_and_gateway() -> None:
    policy = POLICY.replace("backend: github", "backend: gitlab")
    backend = BACKEND + "  gateway: edge\n"
    assert errors({**BASE, "policy.yaml": policy, "backends/github.yaml": backend}) == [
        "backends/github.yaml:7: MCPBackend/github spec.gateway: unknown gateway 'edge' (known: default)",
        "policy.yaml:5: MCPPolicy/github-triage spec.backend: unknown backend 'gitlab' (known: github)",
    ]


def test_backend_gateway_required_unless_exactly_one() -> None:
    second = GATEWAY.replace("default", "edge").replace("10000", "10001")
    assert errors({**BASE, "edge.yaml": second}) == [
        "backends/github.yaml:4: MCPBackend/github spec.gateway: "
        "required when there are several gateways (known: default, edge)"
    ]
    assert errors({k: v for k, v in BASE.items() if k != "gateway.yaml"}) == [
        "backends/github.yaml:4: MCPBackend/github spec.gateway: no Gateway is defined to serve this backend"
    ]
    named = BACKEND + "  gateway: edge\n"
    assert load_texts({**BASE, "edge.yaml": second, "backends/github.yaml": named}).backends_of("edge")


def test_route_conflict_on_one_gateway() -> None:
    other = BACKEND.replace("name: github", "name: gh2") + "  route: /mcp/github\n"
    assert errors({**BASE, "backends/other.yaml": other}) == [  # sorted after github.yaml
        "backends/other.yaml:7: MCPBackend/gh2 spec.route: route '/mcp/github' on gateway 'default' "
        "is already used by MCPBackend/github (backends/github.yaml:3)"
    ]


def test_header_identity_conflict() -> None:
    impostor = AGENTS.split("---\n")[0].replace("name: triage", "name: impostor")
    assert errors({**BASE, "impostor.yaml": impostor}) == [
        "impostor.yaml:5: Agent/impostor spec.identity.header: identity header value 'triage' "
        "is already claimed by Agent/triage (agents.yaml:3)"
    ]


def test_listen_conflict() -> None:
    second = GATEWAY.replace("default", "edge").replace("port: 10000", "address: 127.0.0.1, port: 10000")
    backend = BACKEND + "  gateway: default\n"
    assert errors({**BASE, "second.yaml": second, "backends/github.yaml": backend}) == [
        "second.yaml:5: Gateway/edge spec.listen: 127.0.0.1:10000 is already the listen address of "
        "Gateway/default (gateway.yaml:3)"
    ]


def test_every_error_is_reported_sorted() -> None:
    files = {
        **BASE,
        "gateway.yaml": GATEWAY.replace("port: 10000", "port: 99999"),
        "agents.yaml": AGENTS.replace("header: executor", "heder: executor"),
        "policy.yaml": POLICY.replace("backend: github", "backend: nope").replace("[triage]", "[ghost]"),
        "broken.yaml": "a: [\n",
    }
    diags = errors(files)
    assert [d.split(": ")[0] for d in diags] == ["agents.yaml:12", "broken.yaml:2", "gateway.yaml:5"]
    assert "spec.identity.heder: unknown field 'heder' (did you mean 'header'?)" in diags[0]
    # With an unreadable file the set is incomplete: unresolved names are not
    # reported (they may be defined in the unreadable part). Without it they are.
    files.pop("broken.yaml")
    diags = errors(files)
    assert len(diags) == 4
    assert any("unknown backend 'nope'" in d for d in diags)
    assert any("spec.rules[0].agents[0]: unknown agent 'ghost'" in d for d in diags)


def test_references_in_invalid_documents_are_still_checked() -> None:
    policy = POLICY.replace("[triage]", "[ghost]").replace("prompts: [summarize]", "prompts: summarize")
    assert errors({**BASE, "policy.yaml": policy}) == [
        "policy.yaml:7: MCPPolicy/github-triage spec.rules[0].agents[0]: "
        "unknown agent 'ghost' (known: executor, triage)",
        "policy.yaml:11: MCPPolicy/github-triage spec.rules[1].prompts: must be a list, got 'summarize'",
    ]


def test_hostile_yaml_is_contained() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True)
    )
    duplicate = AGENTS.replace("  identity: {header: triage}", "  identity: {header: triage}\n  identity: {}")
    diags = errors({**BASE, "bomb.yaml": bomb, "agents.yaml": duplicate})
    assert "bomb.yaml:1: document has more than 20000 nodes" in diags[-1]
    assert diags[:2] == [
        "agents.yaml:6: Agent/triage spec.identity: an agent identity needs at least one source (header, spiffe, jwt, apiKey)",
        "agents.yaml:6: Agent/triage spec.identity: duplicate key (first at line 5)",
    ]


def test_non_mapping_document_and_empty_documents() -> None:
    assert errors({**BASE, "list.yaml": "---\n---\n- a\n"}) == [
        "list.yaml:3: a policy document must be a mapping, got a list"
    ]
    assert errors({**BASE, "set.yaml": "!!set {a, b}\n"}) == [
        "set.yaml:1: unsupported YAML tag 'tag:yaml.org,2002:set'"
    ]
    assert isinstance(load_texts({**BASE, "empty.yaml": "# nothing\n---\n"}), PolicySet)


def test_located_diagnostic_for_later_stages() -> None:
    policy = load_texts(BASE).policies[0]
    diag = policy.diagnostic(("spec", "rules", 1, "resources", 0), "cannot compile")
    assert str(diag) == "policy.yaml:10: MCPPolicy/github-triage spec.rules[1].resources[0]: cannot compile"
    assert policy.line_of(("spec", "rules", 1, "nothing", "here")) == 9


def test_load_directory(tmp_path: Path) -> None:
    (tmp_path / "backends").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "gateway.yml").write_text(GATEWAY)
    (tmp_path / "backends" / "github.yaml").write_text(BACKEND)
    (tmp_path / "agents.yaml").write_text(AGENTS)
    (tmp_path / "policy.yaml").write_text(POLICY.replace("[triage]", "[ghost]"))
    (tmp_path / ".hidden" / "junk.yaml").write_text("{{{")
    (tmp_path / ".junk.yaml").write_text("{{{")
    (tmp_path / "schema.json").write_text("{}")
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    assert [d.file for d in info.value.diagnostics] == [str(tmp_path / "policy.yaml")]
    (tmp_path / "policy.yaml").write_text(POLICY)
    policies = load_directory(tmp_path)
    assert policies.backends[0].source.file == str(tmp_path / "backends" / "github.yaml")
    assert policies.gateways[0].source.file == str(tmp_path / "gateway.yml")


def test_load_directory_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy file or directory"):
        load_directory(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("kind: Agent")
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    assert str(info.value) == f"{tmp_path}: no policy documents found in {tmp_path}"


def test_policy_error_is_one_line_per_diagnostic() -> None:
    error = PolicyError([Diagnostic("b.yaml", 2, "", "two"), Diagnostic("a.yaml", 9, "Agent/x spec", "one")])
    assert str(error) == "a.yaml:9: Agent/x spec: one\nb.yaml:2: two"


def test_anchors_and_merge_keys() -> None:
    policy = doc("""\
        kind: MCPPolicy
        metadata: {name: github-triage}
        spec:
          backend: github
          rules:
            - &base {agents: [triage], tools: [list_issues], description: shared}
            - <<: *base
              agents: [executor]
              prompts: [summarize]
            - *base
    """)
    rules = load_texts({**BASE, "policy.yaml": policy}).policies[0].doc.spec.rules
    assert rules[1].agents == ("executor",) and rules[1].tools == ("list_issues",)
    assert rules[1].prompts == ("summarize",) and rules[2] == rules[0]
    bad = policy.replace("prompts: [summarize]", "prompts: [summarize]\n      tols: [x]")
    assert errors({**BASE, "policy.yaml": bad}) == [
        "policy.yaml:11: MCPPolicy/github-triage spec.rules[1].tols: unknown field 'tols' (did you mean 'tools'?)"
    ]


ANONYMOUS_GATEWAY = GATEWAY.replace("identity: {trustedHeader: x-agent-id}",
                                    "identity: {trustedHeader: x-agent-id, anonymous: {agent: public}}")  # fmt: skip
PUBLIC = doc("""\
    kind: Agent
    metadata: {name: public}
    spec: {description: callers with no credential}
""")


def test_the_anonymous_agent_has_no_identity_and_every_other_agent_has_one() -> None:
    loaded = load_texts({**BASE, "gateway.yaml": ANONYMOUS_GATEWAY, "public.yaml": PUBLIC})
    assert [a.name for a in loaded.agents if a.doc.spec.identity is None] == ["public"]
    assert errors({**BASE, "public.yaml": PUBLIC}) == [
        "public.yaml:4: Agent/public spec: identity is required (header, spiffe, jwt or apiKey); only the agent a "
        "Gateway's identity.anonymous names has none"
    ]
    assert errors({**BASE, "gateway.yaml": ANONYMOUS_GATEWAY.replace("agent: public", "agent: triage")}) == [
        "gateway.yaml:6: Gateway/default spec.identity.anonymous.agent: agent 'triage' has identity sources "
        "(Agent/triage (agents.yaml:3)); the anonymous agent must have none: define a separate agent for callers "
        "with no credential"
    ]
    assert errors({**BASE, "gateway.yaml": ANONYMOUS_GATEWAY}) == [
        "gateway.yaml:6: Gateway/default spec.identity.anonymous.agent: unknown agent 'public' "
        "(known: executor, triage)"
    ]


def test_a_character_yaml_forbids_is_reported_on_its_line() -> None:
    assert errors({**BASE, "bad.yaml": "kind: Agent\nmetadata: {name: x\x1f}\n"}) == [
        "bad.yaml:2: YAML error: character U+001F is not allowed in YAML (control characters other than tab and "
        "line breaks)"
    ]
