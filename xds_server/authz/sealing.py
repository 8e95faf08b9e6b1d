"""Sealed ids: what the gateway hands a client in place of a backend's id, bound to its owner.

A backend's task ids name tasks of every caller alike, so the gateway never
shows one: each id it passes on becomes a sealed id that carries the id,
who owns it (agent, and the user it acted for) and what created it (the
tool), with a MAC over all of that. On the way back the sealed id is opened,
checked against the caller, and the backend's own id restored. No store is
needed, so any policy-service replica sharing the key can open any sealed id.

    t1.<payload>.<mac>
    payload = base64url(JSON [scope, agent, user or "", origin, id])
    mac     = base64url(HMAC-SHA256(subkey, "t1." + payload))[:22]   (128 bits)

`scope` is where the id is valid (the gateway and the route, i.e. the
backend): an id sealed on one backend never opens on another, so a backend
cannot hand a caller a seal for another backend's task.

Sealing is deterministic: the same owner, origin and id always give the same
text, so a client polling a task sees one id throughout. The text is ASCII
letters, digits, `-`, `_` and `.`: safe in a header (Mcp-Name) and never
Envoy's `=?base64?...?=` form. The MAC is keyed with a subkey derived from
the gateway's key (`sealingKey`), so other uses of the key never collide.
It authenticates, it does not hide: the payload (owner, tool, the backend's
id) is only base64, as the owner already knows all of it. There is one key
and no key id: a new key makes every sealed id unknown (the tasks behind
them are "not found").

The key is text (the state directory's `sealing.key` is 64 hex digits,
which a Gateway's `sealingKey` can point at); fewer than 32 bytes are
refused, never used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

PREFIX = "t1"
_MAC_CHARS = 22  # 132 bits of base64url, 128 of them from the MAC
_SUBKEY_LABEL = b"agentxds sealed ids v1"
KEY_BYTES = 32


@dataclass(frozen=True)
class Owner:
    """Who a sealed id belongs to: the agent, and the user it acted for ("" for none)."""

    agent: str
    user: str = ""


@dataclass(frozen=True)
class Sealed:
    """What a sealed id holds."""

    scope: str  # where it is valid: the gateway and route it was handed out on
    owner: Owner
    origin: str  # what created it (MCP: the tool)
    raw: str  # the backend's own id


class WeakKey(ValueError):
    """A sealing key shorter than KEY_BYTES (or empty): using it would let anyone forge ids."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    """Seals and opens ids with one key (bytes of any length; at least KEY_BYTES are expected)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise WeakKey(f"a sealing key needs at least {KEY_BYTES} bytes, this one has {len(key)}")
        self._subkey = hmac.new(key, _SUBKEY_LABEL, hashlib.sha256).digest()

    def _mac(self, signed: str) -> str:
        return _b64(hmac.new(self._subkey, signed.encode("ascii"), hashlib.sha256).digest())[:_MAC_CHARS]

    def seal(self, sealed: Sealed) -> str:
        """The sealed id of `sealed`: always the same text for the same values."""
        payload = json.dumps([sealed.scope, sealed.owner.agent, sealed.owner.user, sealed.origin, sealed.raw],
                             ensure_ascii=False, separators=(",", ":"))  # fmt: skip
        signed = f"{PREFIX}.{_b64(payload.encode('utf-8'))}"
        return f"{signed}.{self._mac(signed)}"

    def open(self, text: object) -> Sealed | None:
        """What `text` seals, or None when it is not a sealed id this key made (never raises)."""
        if not isinstance(text, str) or not text.isascii():
            return None
        signed, _, mac = text.rpartition(".")
        if not signed.startswith(PREFIX + ".") or not hmac.compare_digest(mac, self._mac(signed)):
            return None
        try:
            scope, agent, user, origin, raw = json.loads(_unb64(signed[len(PREFIX) + 1 :]))
        except (ValueError, TypeError):
            return None
        if not all(isinstance(v, str) for v in (scope, agent, user, origin, raw)):
            return None
        return Sealed(scope, Owner(agent, user), origin, raw)


def key_from_file(path: Path) -> bytes:
    """The key kept in `path` (text), made if there is none yet: 32 random bytes as 64 hex digits,
    owner-only, written whole before it appears (no reader ever sees half a key). Raises WeakKey
    for a file holding less."""
    try:
        return _checked(path.read_text(encoding="utf-8").strip().encode("utf-8"), path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".sealing-key-")
    try:
        os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(temporary, path)  # atomic, and never over a key another process made first
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return _checked(path.read_text(encoding="utf-8").strip().encode("utf-8"), path)


def _checked(key: bytes, path: Path) -> bytes:
    if len(key) < KEY_BYTES:
        raise WeakKey(f"{path} holds a sealing key of {len(key)} bytes; it needs at least {KEY_BYTES} "
                      "(remove the file to have a new one made)")  # fmt: skip
    return key
