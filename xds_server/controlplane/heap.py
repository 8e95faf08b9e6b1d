"""Keep the cyclic garbage collector out of the edit path of a large policy set.

A large policy set is millions of long-lived Python objects (documents, the
IR, the memos that make rebuilds incremental). Every so many edits CPython's
full collection walks them all: about 125 ms on the 1,000-agent set, paid by
whichever edit happens to trigger it. After each publish the objects that
now exist are moved out of the collector's reach (`gc.freeze`): they are
long-lived by construction, and freed by reference counting like any object
when an edit drops them. Only garbage in reference cycles among frozen
objects would outlive its time (a few dozen objects an edit, measured), so
every `FULL_EVERY` publishes the heap is collected once in full.
"""

from __future__ import annotations

import gc

FULL_EVERY = 200


class HeapSettler:
    def __init__(self, full_every: int = FULL_EVERY) -> None:
        self.full_every = full_every
        self.published = 0

    def after_publish(self) -> None:
        self.published += 1
        if self.published % self.full_every == 0:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)  # the young garbage of the build goes first; only what lives is frozen
        gc.freeze()
