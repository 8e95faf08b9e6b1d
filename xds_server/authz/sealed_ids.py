"""Ids owned by their caller: sealed on the way out, opened and checked on the way in (any protocol).

The ext_proc adapter calls these for the streams Envoy sends it per purpose
(core/wire.py):

- PURPOSE_SEAL, a response that may hand out new ids (MCP: a `tools/call`
  that may create a task): each new id, wherever the response carries it,
  becomes a sealed id owned by the caller (its agent, and the user it acts
  for), valid on this backend only, naming what created it
  (`IdSealing.origin`: the tool).
- PURPOSE_UNSEAL, a request naming an id (MCP: the task methods): the
  sealed id must open with the gateway's key, have been handed out on this
  backend to the caller, and the caller must still be allowed what created
  it (`IdSealing.may_use`); then the backend's own id is put back in the
  request, and the response shows the sealed id again.

Responses stream on as they come (a task's result may take long, and its
progress should not wait), rewritten event by event (authz/messages.py); a
message that cannot be read is withheld, never passed on as it came. Anything else, a foreign, altered, unknown or unsealed
  id, is answered exactly as the backend answers an unknown one
  (`IdSealing.not_found`), so another caller's id looks like no id at all.

Nothing here lets an id through unchecked: a body that cannot be read or
restored exactly is refused the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.authz.messages import StreamRewriter
from xds_server.authz.protocols import IdSealing
from xds_server.authz.sealing import Owner, Sealed, Sealer
from xds_server.authz.state import RouteView
from xds_server.ir.principals import JwtPayloads


def owner_of(view: RouteView, agents: tuple[str, ...], jwt: JwtPayloads) -> Owner | None:
    """Who owns what this caller creates: its agent (the first, by name) and the user it acts for
    (`provider:sub`, so two providers' equal subjects stay apart); None when the caller is unknown.
    Callers that are one agent with no user (the anonymous agent, an agent without user tokens)
    are one owner: they share what they create."""
    if not agents:
        return None
    user = view.user_of(jwt)
    return Owner(agents[0], f"{user[0]}:{user[1]['sub']}" if user is not None else "")


def scope_of(view: RouteView) -> str:
    """Where an id handed out on `view` is valid: its gateway and route (the backend)."""
    return f"{view.gateway.name}/{view.name}"


@dataclass(frozen=True)
class Opened:
    """A request whose sealed id is the caller's: the body (and headers) naming the backend's id, and
    what to show instead of it in the answer."""

    body: bytes
    headers: dict[str, str]
    shown: dict[str, str] = field(default_factory=dict)  # backend's id → sealed id


@dataclass(frozen=True)
class NotFound:
    """A request naming an id that is not the caller's: the answer it gets (as for no such id)."""

    body: str


def open_request(sealing: IdSealing, sealer: Sealer, view: RouteView, agents: tuple[str, ...],
                 jwt: JwtPayloads, body: bytes, headers: Mapping[str, str]) -> Opened | NotFound:  # fmt: skip
    """The request with the backend's id in place of the sealed one it names, if that id is the
    caller's (`_owns`); else what a request naming no such id gets. Never lets an id through
    unchecked: a body that names none, or cannot be restored exactly, is NotFound too."""
    named = sealing.named_id(body)
    request_id = named[0] if named is not None else None
    opened = sealer.open(named[1]) if named is not None else None
    caller = owner_of(view, agents, jwt)
    if (named is None or opened is None or caller is None
            or not _owns(opened, agents, caller, view, sealing, jwt)):  # fmt: skip
        return NotFound(sealing.not_found(request_id))
    sealed_text = named[1]
    assert isinstance(sealed_text, str)  # it opened
    restored = sealing.restore(body, sealed_text, opened.raw)
    if restored is None:
        return NotFound(sealing.not_found(request_id))
    return Opened(restored, sealing.restored_headers(headers, opened.raw), {opened.raw: sealed_text})


def _owns(opened: Sealed, agents: tuple[str, ...], caller: Owner, view: RouteView, sealing: IdSealing,
          jwt: JwtPayloads) -> bool:  # fmt: skip
    """Whether the opened id is the caller's: handed out on this backend, to an agent the request
    proves, for the same user, and that agent may still use what created it."""
    return (
        opened.scope == scope_of(view)
        and opened.owner.agent in agents
        and opened.owner.user == caller.user
        and sealing.may_use(view, opened.owner.agent, opened.origin, jwt)
    )


def seal_stream(sealing: IdSealing, sealer: Sealer, view: RouteView, owner: Owner, origin: str,
                content_type: str, unreadable: bytes) -> StreamRewriter:  # fmt: skip
    """A response, as it streams, with every id it creates sealed for `owner` wherever it carries it."""
    created: dict[str, str] = {}
    scope = scope_of(view)

    def rewrite(message: Any) -> bool:
        for raw in sealing.created_ids(message):
            created[raw] = sealer.seal(Sealed(scope, owner, origin, raw))
        return sealing.replace_ids(message, created)

    return StreamRewriter(content_type, rewrite, unreadable=unreadable)


def reseal_stream(sealing: IdSealing, shown: Mapping[str, str], content_type: str,
                  unreadable: bytes) -> StreamRewriter:  # fmt: skip
    """The response of an opened request, as it streams, showing the sealed id in place of the backend's."""
    return StreamRewriter(content_type, lambda m: sealing.replace_ids(m, shown), unreadable=unreadable)
