"""Registering A2A agents and MCP servers at run time: what a registration must be, screening, drift.

A registration (JSON, `PUT /registry/<name>` or `agentxds registry add`):

    {"kind": "A2AAgent", "card": {<the agent's AgentCard>}, "rules": [<A2APolicy rules>]}
    {"kind": "MCPBackend", "url": "http://10.0.0.7:8000/mcp", "rules": [<MCPPolicy rules>]}

with optional `route`, `gateway` and `timeouts` (as in the policy kinds).
An A2A agent is registered by its card: its JSON-RPC interface URL is where
the gateway sends its requests (http only; an agent behind TLS is defined in
Git), its skills are what drift is judged on. An MCP server is registered
by its URL; its tools are read from it (the MCP SDK client) and judged.

A registration is accepted only if:
- its name is not used in Git (409: Git wins) nor by a registration of the
  other kind;
- the card is a valid one (a name, skills with ids, one JSON-RPC interface);
- no skill or tool description screens as an injection attempt (the tool
  guard's screening, authz/mcp/screening.py): 422;
- its documents load beside the policies in Git (unique route, known agents
  in its rules, ...): 422 with the loader's diagnostics.

A re-registration whose skills or tool descriptions differ from the served
ones is drift: it is held, and an approval is asked for (the approvals
flow: `agentxds approvals approve ID`); the same registration sent again
after the approval is served (202 until then; 403 once denied). The served
registration stays as it was meanwhile. Anything else is served at once:
the configuration is rebuilt and published before the answer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from xds_server.authz.approvals import Approval, ApprovalCall, ApprovalState, ApprovalStore
from xds_server.authz.mcp.screening import screen_description
from xds_server.authz.mcp.tool_guard import fingerprint
from xds_server.controlplane.pipeline import ReloadResult, translate_checked
from xds_server.core.a2a import skill_digest, skill_text, strings_in
from xds_server.ir.build import BuildRefused, build_ir
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import PolicySet, load_directory
from xds_server.sources.registry import (
    KINDS,
    RegisteredSource,
    Registration,
    Registry,
    names_in,
    with_registrations,
)

#: How long an operator has to approve a drifting re-registration.
DRIFT_APPROVAL_TTL_S = 24 * 3600.0
DRIFT_RULE = "registry/drift"
_OPTIONAL = ("route", "gateway", "timeouts")

FetchTools = Callable[[str], Awaitable[list[dict[str, Any]]]]


class DriftApprovals(Protocol):
    """Where drift waits for an operator: the approvals the operators' API shows (the policy service's
    own store, or the shared one with `--state-store`)."""

    async def request(self, call: ApprovalCall, ttl_s: float) -> Approval: ...

    async def use(self, call: ApprovalCall) -> Approval | None: ...


class LocalDriftApprovals:
    """The policy service's SQLite approvals, awaitable."""

    def __init__(self, store: ApprovalStore) -> None:
        self._store = store

    async def request(self, call: ApprovalCall, ttl_s: float) -> Approval:
        return self._store.request(call, ttl_s)

    async def use(self, call: ApprovalCall) -> Approval | None:
        return self._store.use(call)


class RegistrationRefused(Exception):
    """A registration that is not accepted: the HTTP status, why, and the details (diagnostics, findings)."""

    def __init__(self, status: int, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, list(details)


@dataclass(frozen=True)
class Registered:
    """What became of a registration: created | updated | unchanged | held (for `approval_id`)."""

    status: str
    registration: Registration
    approval_id: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)


def _refuse(status: int, message: str, details: Sequence[str] = ()) -> RegistrationRefused:
    return RegistrationRefused(status, message, details)


Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
#: Where registered agents and servers may be, unless the operator says otherwise (`serve
#: --registry-networks`): private networks. Not loopback or link-local: a registration pointing there
#: would have the gateway (and the control plane, which reads an MCP server's tools) call the
#: machine's own services (Envoy's admin port, the approvals API).
DEFAULT_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def _endpoint(url: Any, what: str, networks: Networks) -> tuple[str, int, str]:
    """(host, port, path) of an http URL whose host is an IP address in `networks`."""
    if not isinstance(url, str):
        raise _refuse(422, f"{what} must be an http URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise _refuse(422, f"{what} must be an http:// URL with a host ({url!r}); an agent behind TLS is defined "
                      "in Git, where upstream TLS is configured")  # fmt: skip
    try:
        port = parts.port if parts.port is not None else 80
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise _refuse(422, f"{what} must name an IP address and a valid port ({url!r}): a name could resolve "
                      "anywhere later; a backend known by name is defined in Git") from None  # fmt: skip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if port == 0:
        raise _refuse(422, f"{what} names port 0 ({url!r})")
    special = address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast
    # A special address only through a network that is itself one (127.0.0.0/8 listed), never through 0.0.0.0/0.
    if not any(address in n and (not special or n.is_loopback or n.is_link_local) for n in networks):
        allowed = ", ".join(str(n) for n in networks) or "none"
        raise _refuse(422, f"{what} ({address}) is outside the networks registrations may use ({allowed}; "
                      "agentxds serve --registry-networks; loopback and link-local only when listed as such)")  # fmt: skip
    return str(address), port, parts.path or "/"


def card_interface(card: Any) -> str:
    """The URL of the card's JSON-RPC interface (1.0 `supportedInterfaces`, or 0.3 `url`)."""
    if not isinstance(card, dict) or not isinstance(card.get("name"), str) or not card["name"]:
        raise _refuse(422, "the card is not an AgentCard: it needs a name")
    interfaces = card.get("supportedInterfaces")
    if isinstance(interfaces, list):
        for interface in interfaces:
            if isinstance(interface, dict) and interface.get("protocolBinding") == "JSONRPC":
                return str(interface.get("url"))
    if isinstance(card.get("url"), str) and card.get("preferredTransport", "JSONRPC") == "JSONRPC":
        return str(card["url"])
    raise _refuse(422, "the card lists no JSON-RPC interface (the gateway speaks A2A over JSON-RPC)")


def card_skills(card: Mapping[str, Any]) -> dict[str, str]:
    """Skill id → what drift compares (core.a2a.skill_text: its name, description, tags and examples)."""
    skills = card.get("skills")
    if not isinstance(skills, list):
        raise _refuse(422, "the card is not an AgentCard: skills must be a list")
    out: dict[str, str] = {}
    for skill in skills:
        if not isinstance(skill, dict) or not isinstance(skill.get("id"), str) or not skill["id"]:
            raise _refuse(422, "the card is not an AgentCard: every skill needs an id")
        if skill["id"] in out:
            raise _refuse(422, f"the card lists skill {skill['id']!r} twice")
        out[skill["id"]] = skill_text(skill)
    return out


def tool_descriptions(tools: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Tool name → what drift compares (its description and input schema, as canonical JSON)."""
    out: dict[str, str] = {}
    for tool in tools:
        name = tool.get("name")
        if isinstance(name, str) and name:
            out[name] = json.dumps({"description": tool.get("description"), "inputSchema": tool.get("inputSchema")},
                                   sort_keys=True, ensure_ascii=False)  # fmt: skip
    return out


def _screened(described: Mapping[str, str], card: Mapping[str, Any] | None) -> list[str]:
    """Screening findings in every text of the skills or tools, and of the card's own name and description."""
    findings = []
    texts = [(name, text) for name, said in sorted(described.items()) for text in strings_in(json.loads(said))]
    if card is not None:
        texts += [(f"card.{k}", card[k]) for k in ("name", "description") if isinstance(card.get(k), str)]
    for where, text in texts:
        findings += [f"{where}: {f.kind}: {f.detail}" for f in screen_description(text)]
    return findings


def drift(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    """What changed between two registrations' skills or tools, with the text an operator approves
    (empty: nothing): added (name → what it says), removed (names), changed (name → before and after)."""
    changes: dict[str, Any] = {}
    if added := {n: json.loads(after[n]) for n in sorted(set(after) - set(before))}:
        changes["added"] = added
    if removed := sorted(set(before) - set(after)):
        changes["removed"] = removed
    if changed := {n: {"before": json.loads(before[n]), "after": json.loads(after[n])}
                   for n in sorted(set(before) & set(after)) if before[n] != after[n]}:  # fmt: skip
        changes["changed"] = changed
    return changes


async def parse(name: str, body: Any, fetch_tools: FetchTools, networks: Networks = DEFAULT_NETWORKS) -> Registration:
    """The registration `body` asks for (see the module docstring); raises RegistrationRefused."""
    if not isinstance(body, dict):
        raise _refuse(400, "the body must be a JSON object")
    kind = body.get("kind")
    if kind not in KINDS:
        raise _refuse(422, f"kind must be one of {', '.join(sorted(KINDS))}")
    allowed = {"kind", "rules", *_OPTIONAL, *(("card",) if kind == "A2AAgent" else ("url",))}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _refuse(422, f"unknown field(s) for {kind}: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    rules = body.get("rules")
    if not isinstance(rules, list) or not rules or not all(isinstance(r, dict) for r in rules):
        raise _refuse(422, "rules must be a non-empty list of rules (who may use it; nothing is allowed otherwise)")
    spec: dict[str, Any] = {k: body[k] for k in _OPTIONAL if k in body}
    if kind == "A2AAgent":
        card = body.get("card")
        host, port, path = _endpoint(card_interface(card), "the card's JSON-RPC interface URL", networks)
        assert isinstance(card, dict)  # card_interface checked it
        described, registered_card = card_skills(card), card
        pins: tuple[dict[str, str], ...] = ()
        # What was screened is what is served: a skill the agent changes later is left out of cards.
        spec["pinnedSkills"] = [{"id": s["id"], "sha256": skill_digest(s)} for s in card["skills"]]
    else:
        host, port, path = _endpoint(body.get("url"), "url", networks)
        host_part = f"[{host}]" if ":" in host else host
        try:  # from the address checked, never from another reading of the URL
            tools = await fetch_tools(f"http://{host_part}:{port}{path}")
        except Exception as exc:  # the SDK raises many kinds; the message is what matters here
            raise _refuse(422, f"cannot list the tools at {body['url']}: {type(exc).__name__}") from None
        described, registered_card = tool_descriptions(tools), None
        pins = tuple(_pin(tool) for tool in tools if isinstance(tool.get("name"), str) and tool["name"])
        # What was screened is what is served: a tool that changes later is hidden and refused.
        spec["toolGuard"] = {"screening": "block"}
    spec.update(endpoints=[{"host": host, "port": port}], path=path)
    return Registration(name, kind, spec, tuple(rules), described, registered_card, pins)


def _pin(tool: Mapping[str, Any]) -> dict[str, str]:
    pin = fingerprint(tool)
    return {"name": pin.name, "descriptionSha256": pin.description_sha256,
            "inputSchemaSha256": pin.input_schema_sha256}  # fmt: skip


async def register(
    name: str,
    body: Any,
    *,
    source: RegisteredSource,
    approvals: DriftApprovals | None,
    reload: Callable[[], ReloadResult],
    fetch_tools: FetchTools,
    networks: Networks = DEFAULT_NETWORKS,
) -> Registered:
    """Accept, hold or refuse one registration (see the module docstring)."""
    registration = await parse(name, body, fetch_tools, networks)
    findings = _screened(registration.described, registration.card)
    if findings:
        raise _refuse(422, "a description screens as an injection attempt; the registration is refused", findings)
    store = source.registry
    try:
        git = load_directory(source.path)
    except PolicyError as exc:
        raise _refuse(409, "the policies in Git do not load now; register again once they do",
                      [str(d) for d in exc.diagnostics]) from None  # fmt: skip
    if name in names_in(git):
        raise _refuse(409, f"{name!r} is defined in Git; Git wins (choose another name, or change it in Git)")
    served = store.get(name)
    if served is not None and served.kind != registration.kind:
        raise _refuse(409, f"{name!r} is registered as a {served.kind}; remove it first")
    _check_builds(source, git, [r for r in store.all() if r.name != name], registration)
    if served is not None and served == registration:
        return Registered("unchanged", registration, versions=reload().versions)
    before = served.described if served is not None else store.last_described(name)
    changes = drift(before, registration.described) if before is not None else {}
    if changes:
        approval_id = await _drift_approved(name, registration, changes, approvals)
        if approval_id is not None:
            store.hold(registration, approval_id)
            return Registered("held", registration, approval_id)
    store.put(registration)
    result = reload()
    if not result.ok or name not in source.served:  # checked to build, yet not served: put back what was
        if served is not None:
            store.put(served)
        else:
            store.remove(name)
        reload()
        raise _refuse(500, "the configuration did not build with the registration; it is not served",
                      [*result.errors, *source.conflicts])  # fmt: skip
    return Registered("created" if served is None else "updated", registration, versions=result.versions)


def _check_builds(source: RegisteredSource, git: PolicySet, others: list[Registration],
                  registration: Registration) -> None:  # fmt: skip
    """Refuse (422) a registration whose documents do not load beside Git's and the registrations served
    now (a registration left out for a conflict of its own does not count against it), or whose
    configuration does not build and translate."""
    served, notes = with_registrations(source.path, git, [*others, registration])
    mine = [n for n in notes if f"registration {registration.name!r}" in n]
    if mine:
        raise _refuse(422, "the registration does not load beside the policies", mine)
    if registration.name not in names_in(served):  # left out with others: it could not be checked
        raise _refuse(422, "the registration could not be checked beside the registrations served now", notes)
    try:
        translate_checked(build_ir(served))
    except BuildRefused as exc:
        raise _refuse(422, "the registration does not build", [str(d) for d in exc.diagnostics]) from None
    except Exception as exc:  # the gateway could not serve it: never store what would stop every later build
        raise _refuse(422, f"the configuration does not translate with the registration: {exc}") from None


async def _drift_approved(name: str, registration: Registration, changes: Mapping[str, Any],
                          approvals: DriftApprovals | None) -> str | None:  # fmt: skip
    """None when the drift was approved (the approval is spent); else the id of the approval it waits for."""
    if approvals is None:
        raise _refuse(409, "the registration changes skills or tool descriptions (drift), which needs an operator's "
                      "approval, and this control plane runs no policy service to keep approvals")  # fmt: skip
    digest = hashlib.sha256(json.dumps(registration.to_json(), sort_keys=True).encode()).hexdigest()
    call = ApprovalCall(backend=name, rule=DRIFT_RULE, agent="registry", user=None, tool="re-register",
                        arguments={**changes, "registration": digest})  # fmt: skip
    if await approvals.use(call) is not None:
        return None
    approval = await approvals.request(call, DRIFT_APPROVAL_TTL_S)
    if approval.state is ApprovalState.DENIED:
        raise _refuse(403, f"an operator denied this re-registration of {name!r} (approval {approval.id})")
    return approval.id


def remove(name: str, *, source: RegisteredSource, reload: Callable[[], ReloadResult]) -> ReloadResult | None:
    """Forget a registration and publish without it; None when there was none."""
    if not source.registry.remove(name):
        return None
    return reload()


def listing(store: Registry, conflicts: Sequence[str]) -> dict[str, Any]:
    """What the registry holds: served registrations, those held for approval, and what is left out."""
    return {
        "registrations": [{"name": r.name, "kind": r.kind, "spec": dict(r.spec), "rules": [dict(x) for x in r.rules],
                           "skills" if r.kind == "A2AAgent" else "tools": sorted(r.described)} for r in store.all()],
        "held": [{"name": h.registration.name, "approvalId": h.approval_id, "since": h.since} for h in store.held()],
        "conflicts": list(conflicts),
    }  # fmt: skip
