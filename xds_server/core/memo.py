"""Results kept from one build to the next, by key; what a build did not use is forgotten at its end.

The IR build and the translators each keep one (ir/memo.py, translate/memo.py)
so that an edit rebuilds only what it touched. A key may name objects by
identity: each entry keeps alive the objects its key names (`inputs`), so an
id can never be reused while its entry exists, and a hit always means the
very same live objects.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Memo:
    def __init__(self) -> None:
        self._results: dict[Hashable, tuple[Any, Any]] = {}  # key → (inputs kept alive, result)
        self._used: set[Hashable] = set()

    def result(self, key: Hashable, inputs: Any, compute: Callable[[], T]) -> T:
        """`compute()`, or what it gave last time for this key. `compute` must be a pure function of
        what the key names (it must not report anything: a hit would lose the report)."""
        self._used.add(key)
        found = self._results.get(key)
        if found is None:
            found = self._results[key] = (inputs, compute())
        return found[1]

    def end(self) -> None:
        """Forget the results not used since the last call (call once a build)."""
        self._results = {k: v for k, v in self._results.items() if k in self._used}
        self._used = set()
