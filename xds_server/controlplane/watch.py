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
  a file named through symlinks also has its target's directory watched,
  and the directory of each link met on the way to it (not `/`), so both a
  link swap (`ln -sfn v2 current`) and a write to the target in place are
  seen.

The set of outside directories follows the policies: after a rebuild that
changed it, the watchers are re-armed with the new set. A directory that does
not exist yet is not watched (its file is missing, so the build was refused
anyway); create it, then touch any policy file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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

    For a file named through symlinks, also the directory holding its target (written in
    place) and the directory holding each link met on the way to it (where a link is swapped),
    but never `/` (a link at the top, like macOS's /tmp or /var, would make it watch the disk).
    """
    root = _real(policy_dir)
    dirs = {d for f in files for d in _directories_to_watch(Path(f))}
    return tuple(sorted(d for d in dirs if not _under(_real(d), root) and d.is_dir()))


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))  # unlike Path.resolve on 3.11, never raises (a link loop stays as is)


def _directories_to_watch(file: Path) -> set[Path]:
    dirs = {file.parent, _real(file).parent}
    dirs |= {link.parent for link in links_to(file) if link.parent != link.parent.parent}
    return dirs


MAX_LINKS = 40  # as Linux's own limit on links followed in one lookup


def links_to(file: Path) -> list[Path]:
    """Every symlink the OS follows to open `file` (absolute), hop by hop, at most MAX_LINKS."""
    links: list[Path] = []
    path = Path(os.path.abspath(file))
    while len(links) < MAX_LINKS:
        link = next((prefix for prefix in _prefixes(path) if prefix.is_symlink()), None)
        if link is None:
            break
        links.append(link)
        try:
            target = os.readlink(link)
        except OSError:
            break
        # Every directory before `link` is real, so `..` in the target is taken lexically from there.
        path = Path(os.path.normpath(link.parent / target / path.relative_to(link)))
    return links


def _prefixes(path: Path) -> Iterable[Path]:
    """`/a`, `/a/b`, ... `path`."""
    for i in range(2, len(path.parts) + 1):
        yield Path(*path.parts[:i])


def files_and_targets(files: Iterable[Path]) -> frozenset[Path]:
    """The named files and, for those named through a link, their targets: the paths events name."""
    return frozenset(p for f in files for p in (Path(f), _real(f)))


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


#: How long a newly armed watcher is given to start before the catch-up rebuild (see watch_policies).
ARM_SETTLE_S = 0.25


async def watch_policies(
    pipeline: Pipeline,
    *,
    debounce_ms: int = 100,
    stop: asyncio.Event | None = None,
    on_reload: Callable[[ReloadResult], None] | None = None,
) -> None:
    """Reload `pipeline` after each burst of relevant changes, until `stop` is set.

    The policy directory is watched throughout. The outside directories' watcher is
    replaced when a rebuild changes their set (the new one starts before the old one
    stops), and once the new one has had ARM_SETTLE_S to start, one more rebuild reads
    whatever was written in between, which no watcher saw.
    """
    stop = stop or asyncio.Event()
    policy_dir = _real(pipeline.policy_dir)
    queue: asyncio.Queue[set[tuple[Change, str]]] = asyncio.Queue()
    outside = outside_directories(pipeline.policy_dir, pipeline.files)

    def relevant(_change: object, path: str) -> bool:
        # The policy directory is watched by its real path, so its events name targets, not links.
        return is_relevant(path, policy_dir, files_and_targets(pipeline.files), outside)

    async def feed(paths: tuple[Path, ...], recursive: bool, until: asyncio.Event) -> None:
        try:
            async for changes in awatch(*paths, debounce=debounce_ms, step=_STEP_MS, stop_event=until,
                                        watch_filter=relevant, recursive=recursive):  # fmt: skip
                queue.put_nowait(changes)
        except OSError as exc:  # e.g. a watched directory vanished: keep the other watcher going
            log.warning("cannot watch %s: %s", ", ".join(map(str, paths)), exc)

    def arm(directories: tuple[Path, ...]) -> _Watcher | None:
        if not directories:
            return None
        log.info("also watching %s (files the policies name)", ", ".join(map(str, directories)))
        until = asyncio.Event()
        return _Watcher(until, asyncio.create_task(feed(directories, False, until), name="agentxds-watch-referenced"))

    policies_until = asyncio.Event()
    policies = _Watcher(policies_until, asyncio.create_task(feed((policy_dir,), True, policies_until),
                                                            name="agentxds-watch-policies"))  # fmt: skip
    referenced = arm(outside)
    catch_up_at: float | None = None  # when the catch-up rebuild after a re-arm is due
    stopped = asyncio.create_task(stop.wait())
    getter: asyncio.Task[set[tuple[Change, str]]] | None = None
    loop = asyncio.get_running_loop()
    try:
        while True:
            getter = getter if getter is not None and not getter.done() else asyncio.create_task(queue.get())
            timeout = None if catch_up_at is None else max(0.0, catch_up_at - loop.time())
            done, _ = await asyncio.wait({getter, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                return
            if getter in done:
                changes = getter.result()
                while not queue.empty():  # both watchers fired for one burst: one rebuild
                    changes |= queue.get_nowait()
                log.debug("files changed: %s", sorted(p for _, p in changes))
            else:
                log.debug("rebuilding once more: the watchers were re-armed")
            catch_up_at = None
            result = pipeline.reload()
            if on_reload is not None:
                on_reload(result)
            now_outside = outside_directories(pipeline.policy_dir, pipeline.files)
            if now_outside != outside:  # re-arm with the directories the policies name now
                outside, previous = now_outside, referenced
                referenced = arm(outside)
                if previous is not None:
                    await previous.close()
                catch_up_at = loop.time() + ARM_SETTLE_S
    finally:
        stopped.cancel()
        if getter is not None:
            getter.cancel()
        for watcher in (policies, referenced):
            if watcher is not None:
                await watcher.close()


@dataclass
class _Watcher:
    """One `awatch` feed and the event that ends it (its thread polls it every step)."""

    until: asyncio.Event
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.until.set()
        done, _ = await asyncio.wait({self.task}, timeout=2)
        if not done:
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
