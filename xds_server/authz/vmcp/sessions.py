"""A legacy client's session with a virtual server: its members' session ids, sealed into one id.

No store: the id the client carries holds, for each legacy member, the
session the gateway opened with it (the endpoint holding it, and its id
there), under a MAC with the gateway's
sealing key (authz/sealing.py, HMAC-SHA256), scoped to the gateway and the
virtual server. Any policy-service replica with the key reads it, whichever
Envoy the client's next request goes through; an id altered or made up is
refused (it opens nothing), and so is one of another virtual server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from xds_server.authz.sealing import Owner, Sealed, Sealer
from xds_server.authz.vmcp.upstream import MemberSession

_ORIGIN = "vmcp-session"


def scope_of(gateway: str, server: str) -> str:
    return f"vmcp:{gateway}/{server}"


def seal_session(sealer: Sealer, scope: str, members: Mapping[str, MemberSession]) -> str:
    """The client's session id for the members' sessions `members` (by backend)."""
    raw = json.dumps({b: [s.url, s.id] for b, s in sorted(members.items())}, separators=(",", ":"))
    return sealer.seal(Sealed(scope, Owner(""), _ORIGIN, raw))


def open_session(sealer: Sealer, scope: str, text: str) -> dict[str, MemberSession] | None:
    """The members' sessions `text` seals on `scope`, or None when it is not such an id."""
    sealed = sealer.open(text)
    if sealed is None or sealed.scope != scope or sealed.origin != _ORIGIN:
        return None
    try:
        members = json.loads(sealed.raw)
    except ValueError:
        return None
    if not isinstance(members, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in members.values()
    ):
        return None
    return {backend: MemberSession(url, sid) for backend, (url, sid) in members.items()}
