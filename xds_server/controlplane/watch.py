"""Watch the policy directory, and the files the policies name, and rebuild on change.

Editors and `git checkout` write several files in a burst; events are
grouped (until 20 ms pass without one, at most `debounce_ms`) and each group
triggers one rebuild, so a half-written set is at worst refused once and
then published when the burst ends. A rebuild is incremental (the pipeline's
memos reuse what unchanged documents made) and publishes exactly what a full
one would.

What triggers a rebuild (`is_relevant`):

* a YAML file in the policy directory (recursively; hidden files skipped);
* a certificate or key file (`.crt .pem .key .cer`) in the policy directory,
  whether or not a policy names it yet;
* any file the policies name (`Pipeline.files`: certificates, keys, trust
  bundles, JWKS, secret files), wherever it is;
* anything at all in a directory *outside* the policy directory that holds a
  file the policies name. Those directories are watched too, but not
  recursively, and any event there counts: an atomic rename (`mv new.crt
  gateway.crt`) or a Kubernetes-style symlink swap of a mounted secret
  (`..data`) changes the directory, not always the file's own path. Files
  are named as the policies name them, symlinks kept (`ir/routes.near`);
  a file named through a symlink also has its target's directory watched,
  and the directory of each symlink on its path, so both a link swap
  (`ln -sfn v2 current`) and a write to the target in place are seen.

The set of outside directories follows the policies: after a rebuild that
changed it, the watchers are re-armed with the new set. A directory that does
not exist yet is not watched (its file is missing, so the build was refused
anyway); create it, then touch any policy file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import Change, awatch

from xds_server.controlplane.pipeline import Pipeline, ReloadResult

log = logging.getLogger(__name__)

POLICY_SUFFIXES = (".yaml", ".yml")
KEY_MATERIAL_SUFFIXES = (".crt", ".pem", ".key", ".cer")
_STEP_MS = 20


def _is_policy_file(path: str) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name.endswith(POLICY_SUFFIXES)


def _under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def outside_directories(policy_dir: Path, files: Iterable[Path]) -> tuple[Path, ...]:
    """Existing directories outside `policy_dir` that hold a referenced file, sorted.

    For a file named through a symlink, also the directory holding its target (written in
    place) and each directory holding a symlink on its path (where a link is swapped).
    """
    root = Path(policy_dir).resolve()
    dirs = {d for f in files for d in _directories_to_watch(Path(f))}
    return tuple(sorted(d for d in dirs if not _under(d.resolve(), root) and d.is_dir()))


def _directories_to_watch(file: Path) -> set[Path]:
    dirs = {file.parent, file.resolve().parent}
    dirs |= {ancestor.parent for ancestor in file.parents if ancestor.is_symlink()}
    return dirs


def is_relevant(path: str, policy_dir: Path, files: frozenset[Path], outside: Iterable[Path] = ()) -> bool:
    """Whether a change to `path` must trigger a rebuild (see the module docstring)."""
    p = Path(path)
    if p in files:
        return True
    if any(p.parent == d for d in outside):
        return True
    if not _under(p, Path(policy_dir)):
        return False
    name = p.name
    return not name.startswith(".") and name.endswith(POLICY_SUFFIXES + KEY_MATERIAL_SUFFIXES)


async def watch_policies(
    pipeline: Pipeline,
    *,
    debounce_ms: int = 100,
    stop: asyncio.Event | None = None,
    on_reload: Callable[[ReloadResult], None] | None = None,
) -> None:
    """Reload `pipeline` after each burst of relevant changes, until `stop` is set."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        outside = outside_directories(pipeline.policy_dir, pipeline.files)
        await _watch_round(pipeline, outside, debounce_ms, stop, on_reload)


async def _watch_round(
    pipeline: Pipeline,
    outside: tuple[Path, ...],
    debounce_ms: int,
    stop: asyncio.Event,
    on_reload: Callable[[ReloadResult], None] | None,
) -> None:
    """Watch until `stop` is set or a rebuild changes the set of outside directories."""
    policy_dir = Path(pipeline.policy_dir).resolve()
    round_stop = asyncio.Event()  # ends this round's watchers (their threads poll it every step)
    queue: asyncio.Queue[set[tuple[Change, str]]] = asyncio.Queue()

    def relevant(_change: object, path: str) -> bool:
        return is_relevant(path, policy_dir, pipeline.files, outside)

    async def feed(paths: tuple[Path, ...], recursive: bool) -> None:
        try:
            async for changes in awatch(*paths, debounce=debounce_ms, step=_STEP_MS, stop_event=round_stop,
                                        watch_filter=relevant, recursive=recursive):  # fmt: skip
                queue.put_nowait(changes)
        except OSError as exc:  # e.g. a watched directory vanished: keep the other watcher going
            log.warning("cannot watch %s: %s", ", ".join(map(str, paths)), exc)

    tasks = [asyncio.create_task(feed((policy_dir,), True), name="agentxds-watch-policies")]
    if outside:
        log.info("also watching %s (files the policies name)", ", ".join(map(str, outside)))
        tasks.append(asyncio.create_task(feed(outside, False), name="agentxds-watch-referenced"))
    stopped = asyncio.create_task(stop.wait())
    getter: asyncio.Task[set[tuple[Change, str]]] | None = None
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                return
            changes = getter.result()
            while not queue.empty():  # both watchers fired for one burst: one rebuild
                changes |= queue.get_nowait()
            log.debug("files changed: %s", sorted(p for _, p in changes))
            result = pipeline.reload()
            if on_reload is not None:
                on_reload(result)
            if outside_directories(pipeline.policy_dir, pipeline.files) != outside:
                return  # re-arm with the directories the policies name now
    finally:
        round_stop.set()
        stopped.cancel()
        if getter is not None:
            getter.cancel()
        # The watchers' threads see round_stop within a step and end their generators.
        _, pending = await asyncio.wait(tasks, timeout=2)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
