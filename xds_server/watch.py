"""Watch the policy directory and rebuild on change.

Editors and `git checkout` write several files in a burst; events are
debounced (a quiet period, default 100 ms) and every rebuild is a full one,
so a half-written set is at worst refused once and then published when the
burst ends.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

from watchfiles import awatch

from xds_server.pipeline import Pipeline, ReloadResult

log = logging.getLogger(__name__)


def _is_policy_file(path: str) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name.endswith((".yaml", ".yml"))


async def watch_policies(
    pipeline: Pipeline,
    *,
    debounce_ms: int = 100,
    stop: asyncio.Event | None = None,
    on_reload: Callable[[ReloadResult], None] | None = None,
) -> None:
    """Reload `pipeline` after each burst of changes to its YAML files, until `stop` is set."""
    async for changes in awatch(
        pipeline.policy_dir,
        debounce=debounce_ms,
        step=20,
        stop_event=stop,
        watch_filter=lambda _change, path: _is_policy_file(path),
        recursive=True,
    ):
        log.debug("policy files changed: %s", sorted(p for _, p in changes))
        result = pipeline.reload()
        if on_reload is not None:
            on_reload(result)
