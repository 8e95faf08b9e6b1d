"""One A2A request through the policy service (ext_proc PURPOSE_EXCHANGE): read strictly, its ids
opened, its answer's ids sealed for the caller; the card rewritten for the caller.

A POST's body must be one JSON-RPC 2.0 request object, with no object that
repeats a key (anywhere: parsers disagree on which copy counts), a string
method that is the one Envoy's A2A filter read (RBAC decided on that one),
an A2A method the gateway knows (core/a2a.py) and a string or integer id.
Anything else is refused here, so nothing the gateway could not read the
same way as the agent reaches the agent.

Task ownership without a store: every task and context id an answer
carries (ids.py) is sealed for the caller (agent and user, valid on this
route only, authz/sealing.py); a request naming ids must name sealed ones
that open with the gateway's key, were handed to an agent it proves, for
the same user, on this route, by an agent that still has a grant there.
Else it is answered as A2A answers an unknown task (TaskNotFound), so
another caller's task looks like no task at all. The agent's own ids are
put back byte for byte, and the result checked by reading it again.

A GET (no body) is the card route's: the card's URLs name the gateway, its
skills and capabilities the caller's (cards.py).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

from xds_server.authz.a2a import cards
from xds_server.authz.a2a.ids import request_slots, result_slots
from xds_server.authz.jsonrpc import RepeatedKey, error_body, request_id_of, strict_loads
from xds_server.authz.mcp.screening import screen_description
from xds_server.authz.messages import StreamRewriter, WholeJsonRewriter, is_sse
from xds_server.authz.protocols import Exchange, Refused
from xds_server.authz.sealed_ids import owner_of, scope_of
from xds_server.authz.sealing import Owner, Sealed, Sealer
from xds_server.authz.state import RouteView
from xds_server.core import errors
from xds_server.core.a2a import (
    A2A_METADATA_NAMESPACE,
    CARD_METHODS,
    MESSAGE_METHODS,
    METHOD_OPERATION,
    SKILL_METADATA_KEY,
    TASK_METHODS,
    TASK_NOT_FOUND_CODE,
    TASK_NOT_FOUND_MESSAGE,
    skill_digest,
    strings_in,
)
from xds_server.ir.a2a import A2aAllowsIR, A2aRouteIR
from xds_server.ir.glob import glob_matches
from xds_server.ir.principals import JwtPayloads

#: What created an A2A id (Sealed.origin): the agent's conversation; ownership does not depend on it.
ORIGIN = "a2a"


def not_found(request_id: Any) -> str:
    """A2A's TaskNotFound, exactly as an agent answers an unknown task."""
    error = {"code": TASK_NOT_FOUND_CODE, "message": TASK_NOT_FOUND_MESSAGE}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":"))


def _refused(request_id: Any, kind: errors.ErrorKind, message: str, reason: str | None = None) -> Refused:
    return Refused(kind.http_status, error_body(request_id, kind, message), reason or kind.reason)


class ExchangeRequest:
    """One request of a caller on an A2A route, and what its answer must show."""

    def __init__(self, view: RouteView, sealer: Sealer, agents: tuple[str, ...], jwt: JwtPayloads,
                 headers: Mapping[str, str]) -> None:  # fmt: skip
        self.view, self.sealer, self.agents, self.jwt, self.headers = view, sealer, agents, jwt, headers
        part = view.route.protocol
        assert isinstance(part, A2aRouteIR)
        self.part = part

    # -- the request -------------------------------------------------------------

    def post(self, body: bytes, metadata: Mapping[str, Any]) -> Exchange | Refused:
        deframed = metadata.get(A2A_METADATA_NAMESPACE, {})
        if not isinstance(deframed, Mapping):
            deframed = {}
        request_id = request_id_of(body)
        if request_id is None:  # a body that is not JSON: the id Envoy read before it stopped reading
            request_id = _envoy_id(deframed.get("id"))
        try:
            message = strict_loads(body)
        except RepeatedKey:
            return _refused(request_id, errors.DUPLICATE_KEYS, "Invalid Request: a JSON object in the body "
                            "repeats a key")  # fmt: skip
        except (ValueError, RecursionError):
            return _refused(request_id, errors.PARSE_ERROR, "Parse error: the request body is not complete, valid "
                            "JSON")  # fmt: skip
        if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0" and isinstance(message.get("method"), str)
                and _is_id(message.get("id"))):  # fmt: skip
            request_id = request_id if _is_id(request_id) else None  # JSON-RPC: null when it cannot be told
            return _refused(request_id, errors.NOT_A2A, "Invalid Request: not one A2A JSON-RPC 2.0 request object "
                            "(a string method and a string or integer id)")  # fmt: skip
        method, request_id = message["method"], message["id"]
        if deframed.get("method") != method:
            return _refused(request_id, errors.NOT_A2A, "Invalid Request: the gateway could not read the request's "
                            "method unambiguously")  # fmt: skip
        if method not in METHOD_OPERATION:
            return _refused(request_id, errors.METHOD_DENIED, f"Method {method!r} is not allowed through the gateway")
        owner = owner_of(self.view, self.agents, self.jwt)
        if owner is None:
            return _refused(request_id, errors.UNKNOWN_AGENT, "Unknown agent: the request carries no identity of an "
                            "agent known to this gateway")  # fmt: skip
        params = message.get("params", {})
        if method in MESSAGE_METHODS and (refused := self._skill_refused(request_id, params)) is not None:
            return refused
        slots = request_slots(method, params)
        if method in TASK_METHODS and not slots:
            return Refused(200, not_found(request_id), "not_owner")
        raws: dict[str, str] = {}
        for holder, key in slots:
            raw = self._raw(holder[key], owner)
            if raw is None:
                return Refused(200, not_found(request_id), "not_owner")
            raws[holder[key]] = raw
        restored = self._restored(body, method, message, raws) if raws else body
        shown = {raw: sealed for sealed, raw in raws.items()}
        if method in CARD_METHODS:
            return Exchange(restored if raws else None, lambda _: self._whole(self._card_answer, request_id),
                            "application/json")  # fmt: skip
        answer = self._ids_answer(owner, shown)
        return Exchange(restored if raws else None, lambda content_type: self._rewriter(content_type, answer,
                                                                                        request_id))  # fmt: skip

    def _skill_refused(self, request_id: Any, params: Any) -> Refused | None:
        """A message naming a skill (`metadata.skillId`) the caller was not granted (in a rule granting send or
        stream), or one not pinned, is refused, as is a skill named under another spelling of that key; a
        message naming none is the agent's to route (A2A messages need not name one)."""
        named: list[tuple[str, Any]] = []  # (the metadata key, the skill it names)
        for holder in (params, params.get("message") if isinstance(params, dict) else None):
            metadata = holder.get("metadata") if isinstance(holder, dict) else None
            if not isinstance(metadata, dict):
                continue
            for key, value in metadata.items():
                if key == SKILL_METADATA_KEY:
                    named.append((key, value))
                elif isinstance(key, str) and key.lower().replace("_", "").replace("-", "") == "skillid":
                    named.append((key, None))  # skill_id, SkillId, ...: an agent may read it; only skillId is checked
        who = self.agents[0] if self.agents else "-"
        for key, skill in named:
            granted = [p for agent in self.agents for g in self.view.grants_for(agent, self.jwt)
                       if isinstance(g.allows, A2aAllowsIR) for p in g.allows.skills]  # fmt: skip
            pins = dict(self.part.pinned_skills) if self.part.pinned_skills is not None else None
            refused = f"Skill refused on A2A agent '{self.view.name}' for agent '{who}'"
            if key != SKILL_METADATA_KEY:
                message = (f"{refused}: the message names a skill under '{key}', which the gateway does not "
                           "check; name it under 'skillId'")  # fmt: skip
            elif not isinstance(skill, str):
                message = f"{refused}: 'skillId' must be a string, not {_json_type(skill)}"
            elif not any(glob_matches(p, skill) for p in granted) or (pins is not None and skill not in pins):
                message = f"Skill {skill!r} of A2A agent '{self.view.name}' is not allowed for agent '{who}'"
            else:
                continue
            return Refused(errors.SKILL_DENIED.http_status, error_body(
                request_id, errors.SKILL_DENIED, message, skill=skill, backend=self.view.name), "skill_not_allowed")  # fmt: skip
        return None

    def _raw(self, sealed: str, owner: Owner) -> str | None:
        """The agent's id behind `sealed`, if it is the caller's (see the module docstring), else None."""
        opened = self.sealer.open(sealed)
        if (opened is None or opened.scope != scope_of(self.view) or opened.owner.agent not in self.agents
                or opened.owner.user != owner.user or not self.view.grants_for(opened.owner.agent, self.jwt)):  # fmt: skip
            return None
        return opened.raw

    @staticmethod
    def _restored(body: bytes, method: str, message: dict[str, Any], raws: Mapping[str, str]) -> bytes:
        """`body` with the agent's ids where the sealed ones were, everything else as it came: byte for
        byte when the sealed ids appear nowhere else (read again to be sure), else written anew from
        what was read (the caller's own text naming a sealed id is then kept as it was)."""
        expected = copy.deepcopy(message)
        for holder, key in request_slots(method, expected.get("params", {})):
            holder[key] = raws[holder[key]]
        restored = body
        for text, raw in raws.items():
            restored = restored.replace(json.dumps(text).encode(), json.dumps(raw, ensure_ascii=False).encode())
        try:
            if strict_loads(restored) == expected:
                return restored
        except ValueError:
            pass
        # ensure_ascii: a lone surrogate (valid JSON escapes, no UTF-8) stays an escape.
        return json.dumps(expected, ensure_ascii=True, separators=(",", ":")).encode()

    def get(self, headers: Mapping[str, str]) -> Exchange | Refused:
        path = headers.get(":path", "").split("?", 1)[0]
        if headers.get(":method") != "GET" or path != self.part.card_route:
            return _refused(None, errors.NOT_A2A, "Invalid Request: an A2A request is a POST with a JSON-RPC body")
        return Exchange(None, lambda _: self._whole(lambda card: card if self._card(card) else None, None),
                        "application/json")  # fmt: skip

    # -- the answer ----------------------------------------------------------------

    @staticmethod
    def _unreadable(request_id: Any) -> bytes:
        return error_body(request_id, errors.GATEWAY_ERROR, "The agent's answer could not be read, so it is "
                          "withheld").encode()  # fmt: skip

    def _rewriter(self, content_type: str, rewrite: Callable[[Any], bool], request_id: Any) -> StreamRewriter:
        # Whatever it says it is, an answer that is not SSE is read as JSON: passed on unread, it could
        # carry the agent's own ids.
        as_read = content_type if is_sse(content_type) else "application/json"
        return StreamRewriter(as_read, rewrite, unreadable=self._unreadable(request_id))

    def _whole(self, rewrite: Callable[[Any], Any | None], request_id: Any) -> WholeJsonRewriter:
        """A card (or the answer carrying one) read whole, whatever its content type: anything but a card
        it could filter is withheld."""
        return WholeJsonRewriter(rewrite, self._unreadable(request_id))

    def _ids_answer(self, owner: Owner, shown: Mapping[str, str]) -> Callable[[Any], bool]:
        sealed = dict(shown)
        scope = scope_of(self.view)

        def rewrite(message: Any) -> bool:
            if not isinstance(message, dict):
                return False
            slots = result_slots(message.get("result"))
            for holder, key in slots:
                raw = holder[key]
                if raw not in sealed:
                    sealed[raw] = self.sealer.seal(Sealed(scope, owner, ORIGIN, raw))
                holder[key] = sealed[raw]
            return bool(slots)

        return rewrite

    def _card_answer(self, message: Any) -> Any | None:
        """The extended card's answer: its card filtered, or an error as it is; else None (withheld)."""
        if not isinstance(message, dict):
            return None
        if "result" in message:
            return message if self._card(message["result"]) else None
        return message if isinstance(message.get("error"), dict) else None

    def _card(self, card: Any) -> bool:
        grants = [g.allows for agent in self.agents for g in self.view.grants_for(agent, self.jwt)
                  if isinstance(g.allows, A2aAllowsIR)]  # fmt: skip
        skills = [p for g in grants for p in g.skills]
        operations = frozenset(op for g in grants for op in g.all_operations)
        url = cards.gateway_url(self.headers, self.view.route.path)
        pins = dict(self.part.pinned_skills) if self.part.pinned_skills is not None else None

        def shows(skill: Mapping[str, Any]) -> bool:
            return (any(glob_matches(p, skill["id"]) for p in skills)
                    and (pins is None or pins.get(skill["id"]) == skill_digest(skill))
                    and not _screened(skill))  # fmt: skip

        return cards.rewrite_card(card, url, shows, operations)


def _screened(skill: Mapping[str, Any]) -> bool:
    """Whether any text of a skill screens as an injection attempt (the tool guard's screening)."""
    return any(screen_description(text) for text in strings_in(skill))


def _envoy_id(value: Any) -> Any:
    """An id as Envoy's metadata holds it (numbers as doubles) back in its JSON type where it can tell."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value if isinstance(value, str) else None


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _json_type(value: Any) -> str:
    """The JSON name of a parsed JSON value's type (what the client sent, not Python's name for it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "an array" if isinstance(value, list) else "an object"
