"""The decision log: one JSON line per policy-service decision, written in batches.

Each decision is queued with the time it was made and written to the
`agentxds.decisions` logger at most `interval_s` later (and at `flush()`,
which the service calls when it stops), still one log record per decision
and stamped with the decision's own time. The request path pays for
appending to a list only: formatting, the logging machinery and the write
happen once per batch, not while Envoy waits for an answer. Envoy's own
access log is buffered the same way (flushed every second by default).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

DEFAULT_INTERVAL_S = 0.1
MAX_PENDING = 1000  # flush at once beyond this many queued decisions


class DecisionLog:
    """Queue decisions and write them to `logger` (INFO) in batches.

    `record()` must be called on the event loop's thread (or with no running
    loop, which writes at once). Records are not copied: do not change a
    mapping after passing it in.
    """

    def __init__(self, logger: logging.Logger, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._pending: list[tuple[float, Mapping[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None

    def record(self, fields: Mapping[str, Any]) -> None:
        self._pending.append((time.time(), fields))
        if len(self._pending) >= MAX_PENDING:
            self.flush()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to defer to
                self.flush()
                return
            self._timer = loop.call_later(self._interval_s, self.flush)

    def flush(self) -> None:
        """Write every queued decision now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending or not self._logger.isEnabledFor(logging.INFO):
            return
        for created, fields in pending:
            message = json.dumps(fields, sort_keys=True, default=str)
            record = self._logger.makeRecord(self._logger.name, logging.INFO, __file__, 0, message, (), None)
            # Stamped with the time of the decision, not of the write.
            record.created = created
            record.msecs = int((created - int(created)) * 1000) + 0.0
            record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
            self._logger.handle(record)
