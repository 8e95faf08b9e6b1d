"""What a translation takes from the translations before it: messages built from the same input.

Translators are pure functions of the IR; the memo lets them skip rebuilding
what they built last time from the same input, so that an edit of one
policy rebuilds only what it touched. Two kinds of entries:

- `message(cls, body)`: a message parsed from a dict body (`proto.to_message`)
  is reused when the body is the same (its canonical JSON; a `Prebuilt` in it
  counts by identity), so unchanged clusters, listeners and route entries are
  not parsed again;
- `result(key, inputs, compute)`: anything else, keyed by the identity of IR
  objects (the IR build hands back the very same objects for parts that did
  not change, ir/memo.py), such as a route's RBAC allow-list.

The memo is in force inside `with memo.active():` (a context variable, so
the translators' signatures stay those of pure functions); outside, nothing
is memoised. Messages are shared between the snapshots of successive builds:
nobody mutates a message once built. What no translation used since the last
`end` is forgotten.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

from xds_server.core.memo import Memo

T = TypeVar("T")
_CURRENT: contextvars.ContextVar[TranslateMemo | None] = contextvars.ContextVar("translate_memo", default=None)


class TranslateMemo(Memo):
    """The translators' memo (see the module docstring); in force inside `active()`."""

    @contextlib.contextmanager
    def active(self) -> Iterator[TranslateMemo]:
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)
            self.end()


def current() -> TranslateMemo | None:
    """The memo in force, if any."""
    return _CURRENT.get()


def memoised(key: Hashable, inputs: Any, compute: Callable[[], T]) -> T:
    """`compute()` through the memo in force (or at once, without one)."""
    memo = _CURRENT.get()
    return compute() if memo is None else memo.result(key, inputs, compute)


def body_key(body: Any) -> tuple[tuple[str, tuple[int, ...]], list[Any]]:
    """A dict body's key: its canonical JSON, objects that are not JSON (a Prebuilt) written as a
    marker and counted by identity alongside (so no string in the body can pass for one), and
    those objects (to keep them alive with the entry)."""
    kept: list[Any] = []

    def identity(value: Any) -> str:
        kept.append(value)
        return "<object>"

    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=identity)
    return (text, tuple(id(k) for k in kept)), kept
