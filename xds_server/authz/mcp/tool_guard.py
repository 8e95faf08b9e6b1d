"""Tool pinning and screening: is a tool a backend lists still the tool that was reviewed?

A "rug pull" is an MCP server changing a tool's description or input schema
after it was approved (new hidden instructions, a new `notes` argument that
collects secrets). `agentxds pin` records a sha256 of each tool's description
and canonical input schema in an MCPToolLock document (`fingerprint`); the
policy service compares every tool it sees against it (`judge_tool`) and keeps
the latest verdict per backend and tool (`GuardState`), so a drifted tool is
hidden from `tools/list` and its calls are refused.

Everything but `GuardState` is pure.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from xds_server.authz.mcp.screening import screen_description
from xds_server.ir.mcp import DriftAction, PinnedToolIR, ScreeningMode, ToolGuardIR

DESCRIPTION_CHANGED = "description changed since pinned"
SCHEMA_CHANGED = "input schema changed since pinned"
NOT_PINNED = "not pinned"
NO_NAME = "tool has no name"


def _sha256(text: str) -> str:
    # surrogatepass: JSON can carry lone surrogates ("\ud800"); hash them rather than fail.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def canonical_json(value: Any) -> str:
    """The JSON text hashed for an input schema: sorted keys, no whitespace, UTF-8 as is.

    Key order and spacing differ between servers and protocol revisions (the
    SDK's 2025-11-25 and 2026-07-28 paths order `inputSchema` keys differently),
    so only this form is compared. Values JSON cannot hold are written with str().
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(tool: Mapping[str, Any]) -> PinnedToolIR:
    """sha256 hex digests of a tool's description ("" when absent) and canonical `inputSchema`.

    An absent `inputSchema` hashes as JSON `null`; a description that is not a
    string (malformed) hashes as its canonical JSON, so it can never equal a
    pinned string by accident.
    """
    name = tool.get("name")
    description = tool.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        description = canonical_json(description)
    return PinnedToolIR(
        name=name if isinstance(name, str) else "",
        description_sha256=_sha256(description),
        input_schema_sha256=_sha256(canonical_json(tool.get("inputSchema"))),
    )


@dataclass(frozen=True)
class ToolVerdict:
    """Whether a tool may be listed and called, and why.

    `reasons` explain an unusable verdict (empty when usable); `flags` are
    things worth logging and reporting that do not make the tool unusable
    (an unpinned tool let through, a screening finding in FLAG mode).
    """

    usable: bool
    reasons: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


def find_pin(pins: tuple[PinnedToolIR, ...], name: str) -> PinnedToolIR | None:
    """The pin for `name` in a name-sorted tuple of pins (binary search), or None."""
    i = bisect.bisect_left(pins, name, key=lambda p: p.name)
    return pins[i] if i < len(pins) and pins[i].name == name else None


def judge_unseen(name: str, guard: ToolGuardIR) -> ToolVerdict | None:
    """The verdict for a tool the backend was never seen listing (a backend may serve a tool it does
    not list): one the lock does not name under `unpinned: hide` is unusable, as it would be listed;
    anything else has no verdict (a pinned tool goes on until it is seen changed)."""
    if guard.pins is None or guard.unpinned is not DriftAction.HIDE or find_pin(guard.pins, name) is not None:
        return None
    return ToolVerdict(False, (NOT_PINNED,))


def judge_tool(tool: Mapping[str, Any], guard: ToolGuardIR) -> ToolVerdict:
    """The verdict for one tool as a backend lists it, under one backend's guard.

    Pins (when `guard.pins` is not None): a pinned tool whose description or
    input schema hash differs is unusable; a tool the lock does not list
    follows `guard.unpinned` (HIDE: unusable; ALLOW: usable and flagged).
    Screening (`screen_tool`): OFF skips it, FLAG adds flags, BLOCK makes a
    tool with findings unusable. A tool without a string name is unusable.
    """
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        return ToolVerdict(False, (NO_NAME,))
    reasons: list[str] = []
    flags: list[str] = []
    if guard.pins is not None:
        pin = find_pin(guard.pins, name)
        if pin is None:
            (reasons if guard.unpinned is DriftAction.HIDE else flags).append(NOT_PINNED)
        else:
            now = fingerprint(tool)
            if now.description_sha256 != pin.description_sha256:
                reasons.append(DESCRIPTION_CHANGED)
            if now.input_schema_sha256 != pin.input_schema_sha256:
                reasons.append(SCHEMA_CHANGED)
    if guard.screening is not ScreeningMode.OFF:
        found = screen_tool(tool)
        (reasons if guard.screening is ScreeningMode.BLOCK else flags).extend(found)
    return ToolVerdict(not reasons, tuple(reasons), tuple(flags))


def screen_tool(tool: Mapping[str, Any]) -> list[str]:
    """Screening findings for every text of a tool the model reads, as messages.

    Screens the `description`, the `title`, and each `description` / `title`
    string anywhere in `inputSchema` (argument descriptions are a classic
    hiding place). Each message says where: "suspicious description:
    instruction_tag (<IMPORTANT>)".
    """
    messages: list[str] = []
    for where, text in _texts(tool):
        for finding in screen_description(text):
            messages.append(f"suspicious {where}: {finding.kind} ({finding.detail})")
    return messages


def _texts(tool: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for key in ("description", "title"):
        if isinstance(tool.get(key), str):
            yield key, tool[key]
    yield from _schema_texts(tool.get("inputSchema"), "inputSchema", depth=0)


def _schema_texts(node: Any, path: str, depth: int) -> Iterable[tuple[str, str]]:
    if depth > 32:  # a hostile schema cannot make us recurse without bound
        return
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key in ("description", "title") and isinstance(value, str):
                yield where, value
            else:
                yield from _schema_texts(value, where, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_texts(value, f"{path}[{i}]", depth + 1)


class GuardState:
    """The latest verdict per (backend, tool name), fed by list responses and periodic refreshes.

    Methods do no I/O and never await, so on one asyncio loop each call is
    atomic; a lock also makes them safe from a helper thread. Verdicts are
    replaced per tool name (`observe` of one page does not forget the tools of
    other pages); `replace=True` (a full refresh of every page) also forgets the
    tools the backend no longer lists.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verdicts: dict[str, dict[str, ToolVerdict]] = {}

    def observe(
        self,
        backend: str,
        tools: Iterable[Mapping[str, Any]],
        guard: ToolGuardIR,
        *,
        replace: bool = False,
    ) -> dict[str, ToolVerdict]:
        """Judge each tool, record the verdicts, and return them by tool name.

        Tools without a string name get no entry (nothing could be called by
        that name); if a name appears twice, the later tool's verdict counts.
        """
        judged: dict[str, ToolVerdict] = {}
        for tool in tools:
            name = tool.get("name") if isinstance(tool, Mapping) else None
            if isinstance(name, str) and name:
                judged[name] = judge_tool(tool, guard)
        with self._lock:
            if replace:
                self._verdicts[backend] = dict(judged)
            else:
                self._verdicts.setdefault(backend, {}).update(judged)
        return judged

    def verdict(self, backend: str, tool_name: str) -> ToolVerdict | None:
        """The latest verdict for a tool, or None if it was never observed."""
        with self._lock:
            return self._verdicts.get(backend, {}).get(tool_name)

    def drifted(self, backend: str) -> dict[str, ToolVerdict]:
        """The backend's unusable tools and their verdicts, sorted by name."""
        with self._lock:
            known = dict(self._verdicts.get(backend, {}))
        return {name: v for name, v in sorted(known.items()) if not v.usable}

    def forget(self, backend: str) -> None:
        """Drop everything known about a backend (removed from the policies, or its guard changed)."""
        with self._lock:
            self._verdicts.pop(backend, None)
