"""The runtime registry in the fleet's Valkey/Redis server (`agentxds serve --state-store`).

Every control plane and policy service given the same store serves the same
registrations: each polls the store's version (`version()`, bumped by every
write in the same transaction) and rebuilds when it moved, so a
registration made through one control plane's API is served by all within
about a second. Same data as the SQLite store (sources/registry.py), under
keys of its own:

    agentxds:registry:registrations   hash  name -> registration (JSON)
    agentxds:registry:held            hash  name -> {registration, approvalId, since}
    agentxds:registry:described       hash  name -> what it last served said (kept after a removal)
    agentxds:registry:version         integer, bumped by every write

A store that cannot be reached raises (valkey's errors): the control plane
keeps serving what it built last.
"""

from __future__ import annotations

import json
import time
from typing import Any

import valkey

from .registry import Held, Registration

_PREFIX = "agentxds:registry:"
REGISTRATIONS, HELD, DESCRIBED, VERSION = (f"{_PREFIX}{k}" for k in ("registrations", "held", "described", "version"))


class SharedRegistryStore:
    """Registrations in Valkey/Redis at `url`, shared by every control plane given it."""

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        self._client: Any = valkey.Valkey.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def version(self) -> int:
        """The store's version: it moves with every write (0: never written)."""
        return int(self._client.get(VERSION) or 0)

    def all(self) -> list[Registration]:
        found = self._client.hgetall(REGISTRATIONS)
        return sorted((Registration.from_json(json.loads(v)) for v in found.values()), key=lambda r: r.name)

    def get(self, name: str) -> Registration | None:
        value = self._client.hget(REGISTRATIONS, name)
        return Registration.from_json(json.loads(value)) if value is not None else None

    def put(self, registration: Registration) -> None:
        body = json.dumps(registration.to_json(), sort_keys=True)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(REGISTRATIONS, registration.name, body)
        pipe.hset(DESCRIBED, registration.name, json.dumps(dict(registration.described), sort_keys=True))
        pipe.hdel(HELD, registration.name)
        pipe.incr(VERSION)
        pipe.execute()

    def remove(self, name: str) -> bool:
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(REGISTRATIONS, name)
        pipe.hdel(HELD, name)
        pipe.incr(VERSION)
        gone, held, _ = pipe.execute()
        return bool(gone or held)

    def last_described(self, name: str) -> dict[str, str] | None:
        value = self._client.hget(DESCRIBED, name)
        return dict(json.loads(value)) if value is not None else None

    def hold(self, registration: Registration, approval_id: str) -> None:
        held = {"registration": registration.to_json(), "approvalId": approval_id, "since": time.time()}
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(HELD, registration.name, json.dumps(held, sort_keys=True))
        pipe.incr(VERSION)
        pipe.execute()

    def held(self) -> list[Held]:
        found = [json.loads(v) for v in self._client.hgetall(HELD).values()]
        return sorted((Held(Registration.from_json(h["registration"]), h["approvalId"], h["since"]) for h in found),
                      key=lambda h: h.registration.name)  # fmt: skip

    def close(self) -> None:
        self._client.close()
