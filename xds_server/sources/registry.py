"""The runtime registry: A2A agents and MCP servers registered over an API, kept in SQLite, served
beside the policies in Git as a second policy source.

A registration becomes two policy documents, exactly as if they were in Git
(the loader validates them the same way): the routed one (A2AAgent or
MCPBackend, named after the registration) and its rules (A2APolicy or
MCPPolicy of the same name). Their file name in diagnostics is
`registry:<name>.yaml`.

`RegisteredSource` loads the directory, then the directory with the
registrations. Git always wins, and a conflict is reported, never resolved
silently: a registration whose name Git also uses, or whose documents do
not load beside Git's (a route Git uses, a rule naming an agent Git
removed, ...), is left out of the served set and named in `conflicts`
(shown by `agentxds status` and the registry API). A registration never
keeps a Git edit from being served.

The store keeps, per name, the registration being served and at most one
held for approval (a re-registration whose skills or tool descriptions
changed: drift; controlplane/registry.py decides that). Registrations are
written whole in one transaction; a restart reads them back.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from xds_server.core.wire import REGISTERED_ANNOTATION
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import PolicySet, load_directory

from .directory import DirectorySource

FILE_PREFIX = "registry:"
KINDS = {"A2AAgent": "A2APolicy", "MCPBackend": "MCPPolicy"}
_POLICY_FIELD = {"A2APolicy": "a2aAgent", "MCPPolicy": "backend"}


@dataclass(frozen=True)
class Registration:
    """One registered agent or MCP server: `spec` is its routed document's spec, `rules` its policy's
    rules (both as the YAML would hold them), `described` what drift is judged on (skill or tool
    name → its description and schema, as text), `card` the AgentCard it was registered with."""

    name: str
    kind: str  # "A2AAgent" | "MCPBackend"
    spec: Mapping[str, Any]
    rules: tuple[Mapping[str, Any], ...]
    described: Mapping[str, str] = field(default_factory=dict)
    card: Mapping[str, Any] | None = None
    pins: tuple[Mapping[str, Any], ...] = ()  # an MCP server's tools as screened (its MCPToolLock's entries)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "spec": dict(self.spec), "rules": [dict(r) for r in self.rules],
                "described": dict(self.described), "card": dict(self.card) if self.card is not None else None,
                "pins": [dict(p) for p in self.pins]}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Registration:
        return cls(data["name"], data["kind"], data["spec"], tuple(data["rules"]), data.get("described") or {},
                   data.get("card"), tuple(data.get("pins") or ()))  # fmt: skip

    @property
    def file(self) -> str:
        """Its documents' file name in diagnostics."""
        return f"{FILE_PREFIX}{self.name}.yaml"

    def documents(self) -> str:
        """Its two policy documents, as YAML."""
        policy_kind = KINDS[self.kind]
        docs = [
            {"apiVersion": "agentxds.dev/v1", "kind": self.kind,
             "metadata": {"name": self.name, "annotations": {REGISTERED_ANNOTATION: "true"}},
             "spec": dict(self.spec)},
            {"apiVersion": "agentxds.dev/v1", "kind": policy_kind, "metadata": {"name": self.name},
             "spec": {_POLICY_FIELD[policy_kind]: self.name, "rules": [dict(r) for r in self.rules]}},
        ]  # fmt: skip
        if self.kind == "MCPBackend":
            # Its tools as they were screened: one that changes is hidden and refused (the tool guard).
            docs.append({"apiVersion": "agentxds.dev/v1", "kind": "MCPToolLock", "metadata": {"name": self.name},
                         "spec": {"backend": self.name, "tools": [dict(p) for p in self.pins]}})  # fmt: skip
        return yaml.safe_dump_all(docs, sort_keys=False)


@dataclass(frozen=True)
class Held:
    """A re-registration held for an operator's approval (`approval_id`)."""

    registration: Registration
    approval_id: str
    since: float


class Registry(Protocol):
    """Where registrations are kept: SQLite (`RegistryStore`, one control plane) or the fleet's
    Valkey/Redis (`shared_registry.SharedRegistryStore`, every control plane given it)."""

    def all(self) -> list[Registration]: ...
    def get(self, name: str) -> Registration | None: ...
    def put(self, registration: Registration) -> None: ...
    def remove(self, name: str) -> bool: ...
    def last_described(self, name: str) -> dict[str, str] | None: ...
    def hold(self, registration: Registration, approval_id: str) -> None: ...
    def held(self) -> list[Held]: ...
    def version(self) -> int: ...
    def close(self) -> None: ...


class RegistryStore:
    """Registrations in SQLite (`path`; None: in memory, lost on stop). Safe across threads."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False,
                                   isolation_level=None)  # fmt: skip
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL" if path is not None else "PRAGMA journal_mode=MEMORY")
            self._db.execute("CREATE TABLE IF NOT EXISTS registrations (name TEXT PRIMARY KEY, body TEXT NOT NULL, "
                             "updated_at REAL NOT NULL)")  # fmt: skip
            self._db.execute("CREATE TABLE IF NOT EXISTS held (name TEXT PRIMARY KEY, body TEXT NOT NULL, "
                             "approval_id TEXT NOT NULL, since REAL NOT NULL)")  # fmt: skip
            # What each name last served said (skills, tools), kept after a removal: registering the
            # name again is judged against it, so removing first does not skip a drift's approval.
            self._db.execute("CREATE TABLE IF NOT EXISTS described (name TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def all(self) -> list[Registration]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM registrations ORDER BY name").fetchall()
        return [Registration.from_json(json.loads(body)) for (body,) in rows]

    def get(self, name: str) -> Registration | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM registrations WHERE name = ?", (name,)).fetchone()
        return Registration.from_json(json.loads(row[0])) if row else None

    def put(self, registration: Registration) -> None:
        """Serve `registration` (replacing the one of its name and anything held for it)."""
        body = json.dumps(registration.to_json(), sort_keys=True)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO registrations VALUES (?, ?, ?)", (registration.name, body,
                                                                                       time.time()))  # fmt: skip
            self._db.execute("INSERT OR REPLACE INTO described VALUES (?, ?)",
                             (registration.name, json.dumps(dict(registration.described), sort_keys=True)))  # fmt: skip
            self._db.execute("DELETE FROM held WHERE name = ?", (registration.name,))
            self._db.execute("COMMIT")

    def remove(self, name: str) -> bool:
        """Forget `name` (and anything held for it); whether it was registered."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute("DELETE FROM registrations WHERE name = ?", (name,)).rowcount
            gone += self._db.execute("DELETE FROM held WHERE name = ?", (name,)).rowcount
            self._db.execute("COMMIT")
        return gone > 0

    def last_described(self, name: str) -> dict[str, str] | None:
        """What `name` last served said (its skills or tools), even after its removal; None if never served."""
        with self._lock:
            row = self._db.execute("SELECT body FROM described WHERE name = ?", (name,)).fetchone()
        return dict(json.loads(row[0])) if row else None

    def hold(self, registration: Registration, approval_id: str) -> None:
        body = json.dumps(registration.to_json(), sort_keys=True)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO held VALUES (?, ?, ?, ?)", (registration.name, body, approval_id,
                                                                                  time.time()))  # fmt: skip

    def held(self) -> list[Held]:
        with self._lock:
            rows = self._db.execute("SELECT body, approval_id, since FROM held ORDER BY name").fetchall()
        return [Held(Registration.from_json(json.loads(b)), a, s) for b, a, s in rows]

    def version(self) -> int:
        """Moves when another connection (another process on this database) wrote (SQLite's data_version)."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def names_in(policy_set: PolicySet) -> set[str]:
    """Every document name of a policy set (any kind)."""
    return {located.name for docs in policy_set.by_kind.values() for located in docs}


@dataclass(frozen=True)
class RegisteredSource(DirectorySource):
    """The policy directory plus the registry (see the module docstring). `conflicts` holds what the
    latest load left out, and why."""

    registry: Registry = field(default_factory=RegistryStore, compare=False, hash=False, repr=False)
    conflicts: list[str] = field(default_factory=list, compare=False, hash=False, repr=False)
    #: Registrations served by the latest load (names).
    served: list[str] = field(default_factory=list, compare=False, hash=False, repr=False)
    #: The registrations read last (served again while the registry cannot be read).
    last_read: list[Registration] = field(default_factory=list, compare=False, hash=False, repr=False)
    #: Set (non-empty, with the reason) to load Git's policies alone: the pipeline does, once, when the
    #: configuration does not build with the registrations (a registration never keeps Git's from serving).
    without_registrations: list[str] = field(default_factory=list, compare=False, hash=False, repr=False)

    def load(self) -> PolicySet:
        git = load_directory(self.path, self.cache)  # Git's own errors refuse the change, as without a registry
        if self.without_registrations:
            self.served[:] = []
            self.conflicts[:] = [f"every registration is left out: {self.without_registrations[0]}"]
            return git
        unreadable: list[str] = []
        try:
            self.last_read[:] = self.registry.all()
        except Exception as exc:  # a shared store down: Git's edits still serve, with what was read last
            unreadable = [f"the runtime registry cannot be read ({type(exc).__name__}): its registrations as "
                          "read last are served"]  # fmt: skip
        served, left_out = with_registrations(self.path, git, list(self.last_read), self.cache)
        self.conflicts[:] = [*unreadable, *left_out]
        self.served[:] = sorted(names_in(served) - names_in(git))
        return served


def with_registrations(path: Path, git: PolicySet, registrations: list[Registration],
                       cache: Any = None) -> tuple[PolicySet, list[str]]:  # fmt: skip
    """The policy set of `path` (`git`, already loaded) with every registration that loads beside it,
    and a note per registration left out."""
    taken = names_in(git)
    notes: list[str] = []
    kept: dict[str, Registration] = {}
    for registration in registrations:
        if registration.name in taken:
            notes.append(f"registration {registration.name!r} is not served: Git defines a document named "
                         f"{registration.name!r} (Git wins; remove one of them)")  # fmt: skip
        else:
            kept[registration.file] = registration
    for _ in range(2):  # the second pass drops what the first one found wrong
        if not kept:
            return git, notes
        try:
            return load_directory(path, cache, extra={f: r.documents() for f, r in kept.items()}), notes
        except PolicyError as exc:
            by_file: dict[str, list[str]] = {}
            for diagnostic in exc.diagnostics:
                by_file.setdefault(diagnostic.file, []).append(str(diagnostic))
            blamed = [f for f in by_file if f in kept] or list(kept)  # Git's files fail only beside them: all out
            for file in blamed:
                reason = "; ".join(by_file.get(file, [str(d) for d in exc.diagnostics]))
                notes.append(f"registration {kept[file].name!r} is not served: it does not load beside the "
                             f"policies in Git: {reason}")  # fmt: skip
                del kept[file]
    return git, notes
