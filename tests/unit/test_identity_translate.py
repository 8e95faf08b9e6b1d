"""JWT identities, users in rules and the MCP authorization spec: what the translators produce.

The IR is built by hand here (every identity source, including SPIFFE IDs
and API keys, on one gateway); the last test hands the whole translation to
the real Envoy (`--mode validate`).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests import ir_kit
from tests.golden.static_bootstrap import static_bootstrap
from xds_server.ir.build import build_ir
from xds_server.ir.types import (
    AgentIR,
    ApiKeyPrincipal,
    BackendAuthIR,
    GatewayIR,
    GrantIR,
    HeaderPrincipal,
    IdentityIR,
    JwtPrincipal,
    JwtProviderIR,
    RouteIR,
    SecretIR,
    SpiffePrincipal,
    UserMatchIR,
)
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_texts
from xds_server.runtime.envoy import find_envoy_binary
from xds_server.translate import cel, jwt, oauth, rbac, request_id, translate_gateway
from xds_server.translate.local_reply import local_reply_config
from xds_server.translate.proto import to_dict
from xds_server.translate.protocols.mcp import McpTranslator
from xds_server.translate.route import build_route_configs

# A real RSA public key: Envoy parses the keys when it loads the configuration.
JWKS = json.dumps(
    {
        "keys": [
            {
                "kty": "RSA",
                "kid": "k1",
                "alg": "RS256",
                "use": "sig",
                "e": "AQAB",
                "n": (
                    "qhTi7BkWk18YJGe6VNvXMCL4Qw8aHTknZk9ahqp9A7h4x8lrCn_1laiwjvudni91vJnkFUoSMHsAkHYDZsPkKmJkIBGuZurYvPp6muKOxbvuzCUzcQ"
                    "hLYA5I9cEcCHLqbJZqmPcVWkXl98JWWKH0TQkpHPY1BERT1IOWLAKikf77KlTSn_rWvmKqgbwZNs66tQVQyuxR3vs8DzW3Mikk47PqGe0i1TGMpPU"
                    "CsI9rSUCUlu-Y8S296N3Web5rj6xySY8bqG1eL2wW_36TS8-UPlimzrkBX5IqLVdHG44QqxjMNtKlPkQPoVb1-vGfHaN63hYCkB7oWgtWLU_Nan4gOw"
                ),
            }
        ]
    }
)


def provider(name: str, **kw: Any) -> JwtProviderIR:
    values: dict[str, Any] = dict(name=name, issuer=f"https://{name}.example.com", audiences=(), jwks=JWKS,
                                  jwks_file=None, jwks_url=None, jwks_cache_ms=600_000, token_header="authorization",
                                  groups_claim="groups")  # fmt: skip
    return JwtProviderIR(**(values | kw))


MAINTAINERS = UserMatchIR(provider="corp", subjects=(), groups=("maintainers",), groups_claim="roles", claims=())


def backend(name: str, *, auth: BackendAuthIR | None = None, grants: tuple[GrantIR, ...] = ()) -> RouteIR:
    return ir_kit.route(name, auth=auth, grants=grants)


def grant(agent: str, tools: list[str], user: UserMatchIR | None = None) -> GrantIR:
    return ir_kit.grant(agent, tools, user)


def gateway(*, providers: tuple[JwtProviderIR, ...] = (provider("corp"), provider("agents", token_header="x-agent-token")),
            backends: tuple[RouteIR, ...] | None = None) -> GatewayIR:  # fmt: skip
    agents = (
        AgentIR("dev", (HeaderPrincipal("x-agent-id", "dev"),)),
        AgentIR("keyed", (ApiKeyPrincipal("x-api-key", SecretIR("TEST_AGENT_KEY", None, "k-123")),)),
        AgentIR("odd", (JwtPrincipal("agents", "https://example.com/agent:id", "odd-1"),)),
        AgentIR("spiffed", (SpiffePrincipal("spiffe://example.org/agent/spiffed"),)),
        AgentIR("triage", (JwtPrincipal("agents", "azp", "triage-bot"), HeaderPrincipal("x-agent-id", "triage"))),
    )
    if backends is None:
        backends = (
            backend("github", auth=BackendAuthIR("corp", None, ("mcp:tools",)),
                    grants=(grant("triage", ["list_issues"]), grant("triage", ["create_issue"], MAINTAINERS))),
            backend("wiki", grants=tuple(grant(a.name, ["*"]) for a in agents)),
        )  # fmt: skip
    return ir_kit.gateway(agents=agents, routes=backends, identity=IdentityIR("x-agent-id", providers))


def policies_with_jwks(jwks: dict[str, Any], *, second_gateway: bool = False, auth: str | None = None) -> str:
    """A policy set whose gateway has provider `corp` with these JWKS settings."""
    gateways = f"""apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  listen: {{port: 10401}}
  identity:
    jwtProviders:
      - {{name: corp, issuer: https://corp.example.com, jwks: {json.dumps(jwks)}}}
"""
    if second_gateway:
        gateways += f"""---
apiVersion: agentxds.dev/v1
kind: Gateway
metadata: {{name: other}}
spec:
  listen: {{port: 10402}}
  identity:
    jwtProviders:
      - {{name: elsewhere, issuer: https://elsewhere.example.com, jwks: {{inline: {json.dumps(JWKS)}}}}}
"""
    backend_doc = """---
apiVersion: agentxds.dev/v1
kind: MCPBackend
metadata: {name: wiki}
spec:
  gateway: gw
  endpoints: [{host: 127.0.0.1, port: 9}]
"""
    if auth is not None:
        backend_doc += f"  auth: {{provider: {auth}}}\n"
    return gateways + backend_doc


# ---------------------------------------------------------------- jwt_authn


def jwt_config(gw: GatewayIR) -> dict[str, Any]:
    f = jwt.jwt_authn_filter(gw)
    assert f is not None and f.name == "envoy.filters.http.jwt_authn"
    return f.config


def test_no_providers_no_filter() -> None:
    gw = gateway(providers=(), backends=(backend("wiki"),))
    assert jwt.jwt_authn_filter(gw) is None
    assert jwt.route_requirement(gw, gw.routes[0]) == {} and jwt.route_disabled(gw) == {}


def test_providers_check_tokens_from_their_header_and_expose_the_payload() -> None:
    providers = jwt_config(gateway())["providers"]
    assert providers["corp"]["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}]
    assert providers["agents"]["from_headers"] == [{"name": "x-agent-token"}]
    for name, p in providers.items():
        assert p["payload_in_metadata"] == name and p["forward"] is True and p["require_expiration"] is True
        assert p["local_jwks"] == {"inline_string": JWKS}


def test_tokens_are_optional_but_checked_and_auth_backends_require_theirs() -> None:
    gw = gateway()
    requirements = jwt_config(gw)["requirement_map"]
    optional_agents = {"requires_any": {"requirements": [{"provider_name": "agents"}, {"allow_missing": {}}]}}
    assert requirements["optional"] == {
        "requires_all": {
            "requirements": [
                {"requires_any": {"requirements": [{"provider_name": "corp"}, {"allow_missing": {}}]}},
                optional_agents,
            ]
        }
    }
    assert requirements["user/corp"] == {"requires_all": {"requirements": [{"provider_name": "corp"}, optional_agents]}}
    github, wiki = gw.routes
    assert jwt.route_requirement(gw, github)["envoy.filters.http.jwt_authn"]["requirement_name"] == "user/corp"
    assert jwt.route_requirement(gw, wiki)["envoy.filters.http.jwt_authn"]["requirement_name"] == "optional"


def test_providers_sharing_a_header_accept_either_token() -> None:
    gw = gateway(providers=(provider("corp"), provider("partners")), backends=(backend("wiki"),))
    assert jwt_config(gw)["requirement_map"] == {"optional": {"requires_any": {"requirements": [
        {"provider_name": "corp"}, {"provider_name": "partners"}, {"allow_missing": {}}]}}}  # fmt: skip


def test_a_jwks_file_is_read_at_every_build(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(JWKS)
    policies = {"all.yaml": policies_with_jwks({"file": str(path)})}

    def built() -> GatewayIR:
        return build_ir(load_texts(policies)).gateways[0]

    assert jwt_config(built())["providers"]["corp"]["local_jwks"]["inline_string"] == JWKS
    rotated = JWKS.replace('"k1"', '"k2"')
    path.write_text(rotated)
    assert jwt_config(built())["providers"]["corp"]["local_jwks"]["inline_string"] == rotated


@pytest.mark.parametrize("content, message", [(None, "cannot read it"), ("{nope", "not JSON"),
                                              ('{"keys": []}', "not a JWKS document")])  # fmt: skip
def test_unusable_keys_refuse_the_build(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PolicyError, match=message) as refused:
        build_ir(load_texts({"all.yaml": policies_with_jwks({"file": str(path)})}))
    # the pipeline refuses the change and keeps the last good one; the diagnostic names the field
    (diagnostic,) = refused.value.diagnostics
    assert "corp" in str(diagnostic) and diagnostic.field == "Gateway/gw spec.identity.jwtProviders[0].jwks.file"


def test_a_backend_naming_a_provider_its_gateway_lacks_refuses_the_build() -> None:
    policies = {"all.yaml": policies_with_jwks({"inline": JWKS}, second_gateway=True, auth="elsewhere")}
    with pytest.raises(PolicyError, match="not a jwtProvider of gateway gw"):
        build_ir(load_texts(policies))


@pytest.mark.parametrize("kind", ["MCPPolicy", "A2APolicy"])
def test_a_rule_naming_users_of_a_provider_its_gateway_lacks_refuses_the_build(kind: str) -> None:
    # Its grant could never match: Envoy verifies no token of that provider on this gateway, and a
    # header claiming one could only be forged.
    backend = (
        ""
        if kind == "MCPPolicy"
        else """---
apiVersion: agentxds.dev/v1
kind: A2AAgent
metadata: {name: helper}
spec:
  gateway: gw
  endpoints: [{host: 127.0.0.1, port: 9}]
"""
    )
    rule = "tools: [list_issues]" if kind == "MCPPolicy" else "operations: [send]"
    policy = f"""---
apiVersion: agentxds.dev/v1
kind: Agent
metadata: {{name: executor}}
spec: {{identity: {{jwt: {{provider: corp, claim: azp, value: executor}}}}}}
---
apiVersion: agentxds.dev/v1
kind: {kind}
metadata: {{name: p}}
spec:
  {"backend: wiki" if kind == "MCPPolicy" else "a2aAgent: helper"}
  rules:
    - agents: [executor]
      {rule}
      users: {{provider: elsewhere, subjects: [alice]}}
"""
    policies = {"all.yaml": policies_with_jwks({"inline": JWKS}, second_gateway=True) + backend + policy}
    with pytest.raises(PolicyError) as refused:
        build_ir(load_texts(policies))
    (diagnostic,) = refused.value.diagnostics
    assert diagnostic.field == f"{kind}/p spec.rules[0].users.provider", diagnostic
    assert "'elsewhere' is not a jwtProvider of gateway gw (known: corp)" in str(diagnostic)


def test_a_jwks_url_gets_a_cluster_of_its_own() -> None:
    remote = provider("idp", jwks=None, jwks_url="https://login.example.com/keys", jwks_cache_ms=300_000)
    local = provider("local", jwks=None, jwks_url="http://127.0.0.1:8081/jwks.json")
    gw = gateway(providers=(remote, local), backends=(backend("wiki"),))
    fetched = jwt_config(gw)["providers"]["idp"]["remote_jwks"]
    assert fetched["http_uri"] == {"uri": "https://login.example.com/keys", "cluster": "jwks/idp", "timeout": "5s"}
    assert fetched["cache_duration"] == "300.000s" and fetched["async_fetch"] == {"fast_listener": True}
    clusters = {c.name: to_dict(c) for c in jwt.jwks_clusters(gw)}
    assert set(clusters) == {"jwks/idp", "jwks/local"}
    tls = clusters["jwks/idp"]["transport_socket"]["typed_config"]
    assert clusters["jwks/idp"]["type"] == "STRICT_DNS" and tls["sni"] == "login.example.com"
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "login.example.com"}}]  # fmt: skip
    address = clusters["jwks/idp"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "login.example.com", "port_value": 443}
    assert clusters["jwks/local"]["type"] == "STATIC" and "transport_socket" not in clusters["jwks/local"]


# ---------------------------------------------------------------- users in RBAC


def test_a_users_grant_is_the_agent_and_the_user() -> None:
    gw = gateway()
    policies = rbac.route_rbac_rules(gw.routes[0], gw, McpTranslator())["rbac"]["rules"]["policies"]
    assert set(policies) == {"agent/triage", "agent/triage/users[1]", rbac.COMMON_POLICY}
    (plain,) = [p["principals"] for k, p in policies.items() if k == "agent/triage"]
    # What every grant allows (lists, lifecycle) is one policy with every grant's principals.
    assert policies[rbac.COMMON_POLICY]["principals"] == plain + policies["agent/triage/users[1]"]["principals"]
    # The agent as the identify filter named it (by its credentials as of this version: the filter's
    # configuration is discovered, ECDS, so it follows a rotation on open connections too); whoever the user is.
    triage = next(a for a in gw.agents if a.name == "triage")
    assert plain == [rbac.proven(triage)] == [rbac.identified_as("triage")]
    (limited,) = policies["agent/triage/users[1]"]["principals"]
    agent_part, user_part = limited["and_ids"]["ids"]
    assert [agent_part] == plain
    matcher = user_part["sourced_metadata"]["metadata_matcher"]
    assert matcher["filter"] == "envoy.filters.http.jwt_authn"
    assert matcher["path"] == [{"key": "corp"}, {"key": "roles"}]  # the provider's groups claim
    assert matcher["value"] == {
        "or_match": {
            "value_matchers": [
                {"list_match": {"one_of": {"string_match": {"exact": "maintainers"}}}},
                {"string_match": {"exact": "maintainers"}},
            ]
        }
    }


def test_every_user_condition_must_hold() -> None:
    user = UserMatchIR(provider="corp", subjects=("alice", "bob"), groups=(), groups_claim="groups",
                       claims=(("department", "platform"),))  # fmt: skip
    principal = user.rbac()
    subjects, department = principal["and_ids"]["ids"]
    assert subjects["sourced_metadata"]["metadata_matcher"]["path"] == [{"key": "corp"}, {"key": "sub"}]
    assert subjects["sourced_metadata"]["metadata_matcher"]["value"]["or_match"]["value_matchers"] == [
        {"string_match": {"exact": "alice"}}, {"string_match": {"exact": "bob"}}]  # fmt: skip
    assert department["sourced_metadata"]["metadata_matcher"]["value"] == {"string_match": {"exact": "platform"}}
    anyone = replace(user, subjects=(), claims=()).rbac()
    assert anyone["sourced_metadata"]["metadata_matcher"] == {
        "filter": "envoy.filters.http.jwt_authn",
        "path": [{"key": "corp"}],
        "value": {"present_match": True},
    }


# ---------------------------------------------------------------- local replies and oauth


def test_refusals_of_known_agents_name_the_agent_envoy_recognised_never_a_key() -> None:
    gw = gateway()  # agents by header, JWT claim, SPIFFE ID, API key, and an anonymous one
    mappers = local_reply_config(gw)["mappers"]
    denials = [m for m in mappers if "is not allowed for agent" in json.dumps(m.get("body_format_override"))]
    # One set of refusals for every known caller, however it proved itself: the identify filter named it.
    identified = {"metadata_filter": {"matcher": {"filter": cel.RBAC_NAMESPACE, "path": [{"key": cel.IDENTIFIED_AGENT_KEY}],
                                                  "value": {"present_match": True}}, "match_if_key_not_found": False}}  # fmt: skip
    assert denials and all(identified in m["filter"]["and_filter"]["filters"] for m in denials)
    # Named as Envoy recognised it, also where a long id leaves the other values out.
    assert all(f"for agent '{cel.IDENTIFIED_AGENT}'" in json.dumps(m["body_format_override"]) for m in denials)
    assert all("k-123" not in json.dumps(m.get("body_format_override")) for m in mappers)


def _base_mappers(gw: GatewayIR) -> list[dict[str, Any]]:
    """The local-reply mappers without the variants that echo the id read by json_to_metadata
    (translate/request_id.py): each base mapper comes last among its variants."""
    return [m for m in local_reply_config(gw)["mappers"]
            if "text_format_source" not in m.get("body_format_override", {})
            and m.get("body_format_override", {}).get("json_format", {}).get("id") != request_id.ID]  # fmt: skip


def _mapper_with_reason(gw: GatewayIR, reason: str) -> list[dict[str, Any]]:
    return [m for m in _base_mappers(gw)
            if m.get("body_format_override", {}).get("json_format", {}).get("error", {}).get("data", {}).get("reason") == reason]  # fmt: skip


def test_token_refusals_are_401_jsonrpc_errors_with_the_challenge_on_auth_backends() -> None:
    gw = gateway()
    missing = _mapper_with_reason(gw, "missing_credentials")
    invalid = _mapper_with_reason(gw, "invalid_credentials")
    assert len(missing) == 1 and len(invalid) == 2  # github's, then every other route's
    assert missing[0]["status_code"] == 401 and all(m["status_code"] == 401 for m in invalid)
    url = "%REQ(:scheme)%://%REQ(:authority)%/.well-known/oauth-protected-resource/mcp/github"
    assert missing[0]["headers_to_add"] == [{"header": {"key": "www-authenticate",
        "value": f'Bearer resource_metadata="{url}", scope="mcp:tools"'}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]  # fmt: skip
    assert 'error="invalid_token"' in invalid[0]["headers_to_add"][0]["header"]["value"]
    assert "headers_to_add" not in invalid[1]
    assert _mapper_with_reason(gateway(providers=(), backends=(backend("wiki"),)), "invalid_credentials") == []


def test_denials_of_known_agents_come_once_then_unknown_agent_last() -> None:
    mappers = _base_mappers(gateway())
    reasons = [m["body_format_override"]["json_format"]["error"]["data"]["reason"] for m in mappers
               if "json_format" in m.get("body_format_override", {}) and "error" in m["body_format_override"]["json_format"]]  # fmt: skip
    denials = [r for r in reasons if r in {"tool_not_allowed", "resource_not_allowed", "prompt_not_allowed",
                                             "method_not_allowed", "unknown_agent"}]  # fmt: skip
    assert denials == ["tool_not_allowed", "resource_not_allowed", "prompt_not_allowed", "method_not_allowed",
                       "unknown_agent"]  # fmt: skip


def test_metadata_documents_follow_rfc9728_path_insertion() -> None:
    derived = backend("github", auth=BackendAuthIR("corp", None, ()))
    configured = backend("docs", auth=BackendAuthIR("corp", "https://gw.example.com/tools/docs/", ("a", "b")))
    gw = gateway(backends=(derived, configured))
    assert oauth.document_paths(gw, derived) == ["/.well-known/oauth-protected-resource/mcp/github"]
    assert oauth.document_paths(gw, configured) == ["/.well-known/oauth-protected-resource/mcp/docs",
                                                    "/.well-known/oauth-protected-resource/tools/docs"]  # fmt: skip
    assert oauth.metadata_url(configured) == "https://gw.example.com/.well-known/oauth-protected-resource/tools/docs"
    assert oauth.document(gw, configured) == {
        "resource": "https://gw.example.com/tools/docs/", "authorization_servers": ["https://corp.example.com"],
        "bearer_methods_supported": ["header"], "scopes_supported": ["a", "b"]}  # fmt: skip
    assert oauth.resource(derived) == "%REQ(:scheme)%://%REQ(:authority)%/mcp/github"
    alone = gateway(backends=(derived, backend("wiki")))  # the only backend with auth: the root document too
    assert oauth.document_paths(alone, derived) == ["/.well-known/oauth-protected-resource",
                                                    "/.well-known/oauth-protected-resource/mcp/github"]  # fmt: skip
    assert oauth.literal("https://x/a%20b") == "https://x/a%%20b"


def test_metadata_routes_need_no_token_and_no_mcp() -> None:
    gw = gateway()
    configs, scopes = build_route_configs(gw)
    (github,) = [to_dict(c) for c in configs if c.name == "routes/mcp/github"]
    routes = github["virtual_hosts"][0]["routes"]
    document = next(r for r in routes if r["name"] == "github/oauth-protected-resource")
    # The document's path is a scope of github's own route configuration.
    assert {sc.key.fragments[0].string_key: sc.route_configuration_name for sc in scopes}[
        "/.well-known/oauth-protected-resource/mcp/github"] == "routes/mcp/github"  # fmt: skip
    assert document["direct_response"] == {"status": 200}
    filters = document["typed_per_filter_config"]
    assert filters["envoy.filters.http.mcp"] == {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                                                 "disabled": True}  # fmt: skip
    assert filters["envoy.filters.http.jwt_authn"]["disabled"] is True
    assert set(filters["envoy.filters.http.rbac"]) == {"@type"}  # no rules: RBAC off


def test_envoy_accepts_every_identity_source(tmp_path: Path) -> None:
    gw = gateway(providers=(provider("corp"), provider("agents", token_header="x-agent-token"),
                            provider("idp", jwks=None, jwks_url="https://login.example.com/keys")))  # fmt: skip
    resources = translate_gateway(gw)
    resources = replace(resources, clusters=tuple(sorted(
        {c.name: c for c in (*resources.clusters, *jwt.jwks_clusters(gw))}.values(), key=lambda c: c.name)))  # fmt: skip
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(static_bootstrap(resources)))
    result = subprocess.run([find_envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
