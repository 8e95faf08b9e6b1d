"""What an IR build takes from the builds before it, so an edit rebuilds only what it touched.

The IR is a pure function of the policies (and the files they name); a
memo only lets a build skip work whose inputs are the very same objects as
last time, and hand back the very same objects for parts that came out
equal, so the translators' own memo (translate/memo.py) can tell what did not
change by identity. What a build yields with a memo is equal to what it
yields without one (tests/unit/test_incremental.py checks it on random edits).

Inputs are keyed by identity: the loader gives back the same document
objects for documents whose text did not change (policy/doc_cache.py), so a
document's identity stands for its content (core/memo.py keeps them alive).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from xds_server.core.memo import Memo

T = TypeVar("T")


class BuildMemo(Memo):
    """Results of the last builds, by key; and the parts they produced, by name (interned)."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: dict[Hashable, Any] = {}  # name → the part last built under it
        self._named: set[Hashable] = set()

    def same(self, name: Hashable, part: T) -> T:
        """The part built under `name` last time if it equals `part` (cheap when its large fields are
        the same objects), else `part`; remembered for the next build."""
        self._named.add(name)
        previous = self._parts.get(name)
        if previous is not None and previous == part:
            return previous
        self._parts[name] = part
        return part

    def end_build(self) -> None:
        """Forget what the build that just ended did not use."""
        self.end()
        self._parts = {k: v for k, v in self._parts.items() if k in self._named}
        self._named = set()
