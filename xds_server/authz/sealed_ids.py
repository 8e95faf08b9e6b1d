"""Ids owned by their caller: sealed on the way out, opened and checked on the way in (any protocol).

The ext_proc adapter calls these for the streams Envoy sends it per purpose
(core/wire.py):

- PURPOSE_SEAL, a response that may hand out new ids (MCP: a `tools/call`
  that may create a task): each new id, wherever the response carries it,
  becomes a sealed id owned by the caller (its agent, and the user it acts
  for), naming what created it (`IdSealing.origin`: the tool).
- PURPOSE_UNSEAL / PURPOSE_UNSEAL_STREAM, a request naming an id (MCP: the
  task methods): the sealed id must open with the gateway's key, belong to
  the caller, and the caller must still be allowed what created it
  (`IdSealing.may_use`); then the backend's own id is put back in the
  request, and the response (buffered, or streamed as it comes) shows the
  sealed id again. Anything else, a foreign, altered, unknown or unsealed
  id, is answered exactly as the backend answers an unknown one
  (`IdSealing.not_found`), so another caller's id looks like no id at all.

Nothing here lets an id through unchecked: a body that cannot be read or
restored exactly is refused the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xds_server.authz.messages import StreamRewriter, rewrite_body
from xds_server.authz.protocols import IdSealing, ResponseRewrite
from xds_server.authz.sealing import Owner, Sealed, Sealer
from xds_server.authz.state import RouteView
from xds_server.ir.principals import JwtPayloads


def owner_of(view: RouteView, agents: tuple[str, ...], jwt: JwtPayloads) -> Owner | None:
    """Who owns what this caller creates: its agent (the first, by name) and user; None if unknown."""
    if not agents:
        return None
    user = view.user_claims(jwt).get("sub")
    return Owner(agents[0], user if isinstance(user, str) else "")


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
    named = sealing.named_id(body)
    request_id = named[0] if named is not None else None
    opened = sealer.open(named[1]) if named is not None else None
    caller = owner_of(view, agents, jwt)
    if named is None or opened is None or caller is None or not _owns(opened, agents, caller, view, sealing, jwt):
        return NotFound(sealing.not_found(request_id))
    sealed_text = named[1]
    assert isinstance(sealed_text, str)  # it opened
    restored = sealing.restore(body, sealed_text, opened.raw)
    if restored is None:
        return NotFound(sealing.not_found(request_id))
    return Opened(restored, sealing.restored_headers(headers, opened.raw), {opened.raw: sealed_text})


def _owns(opened: Sealed, agents: tuple[str, ...], caller: Owner, view: RouteView, sealing: IdSealing,
          jwt: JwtPayloads) -> bool:  # fmt: skip
    return (
        opened.owner.agent in agents
        and opened.owner.user == caller.user
        and sealing.may_use(view, opened.owner.agent, opened.origin, jwt)
    )


def seal_created(sealing: IdSealing, sealer: Sealer, owner: Owner, origin: str, body: bytes,
                 content_type: str) -> ResponseRewrite:  # fmt: skip
    """The response with every id it creates sealed for `owner` (wherever the response carries it)."""
    created: dict[str, str] = {}

    def collect(message: Any) -> bool:
        for raw in sealing.created_ids(message):
            created[raw] = sealer.seal(Sealed(owner, origin, raw))
        return False

    first = rewrite_body(body, content_type, collect)
    if not created:
        return ResponseRewrite(None, readable=not first.failed)
    second = rewrite_body(body, content_type, lambda m: sealing.replace_ids(m, created))
    return ResponseRewrite(second.body, readable=not second.failed)


def reseal(sealing: IdSealing, shown: Mapping[str, str], body: bytes, content_type: str) -> ResponseRewrite:
    """The response of an opened request showing the sealed id in place of the backend's."""
    outcome = rewrite_body(body, content_type, lambda m: sealing.replace_ids(m, shown))
    return ResponseRewrite(outcome.body, readable=not outcome.failed)


def reseal_stream(sealing: IdSealing, shown: Mapping[str, str], content_type: str) -> StreamRewriter:
    """`reseal` for a response streamed on as it comes."""
    return StreamRewriter(content_type, lambda m: sealing.replace_ids(m, shown))
