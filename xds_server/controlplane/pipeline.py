"""source → IR → translate → verify → publish, keeping the last good configuration.

`Pipeline.reload()` runs the whole chain on its policy source. Only a set that
passes every stage is published; otherwise the previous snapshots keep
serving. Two kinds of failure, told apart:

- **policy errors** (`PolicyError`: the loader's diagnostics, and files or
  secrets the policies name that cannot be used): the change is refused, the
  diagnostics (file, line, field) are logged, returned and shown by
  `agentxds status` as policy errors;
- **internal errors** (any other exception, from loading, building the IR,
  translating or verifying, i.e. a bug of the gateway): logged with the
  stack, recorded for `agentxds status` as an internal error, never blamed on
  the policies. `reload()` never raises, so the watcher keeps following edits.

A valid set that would take everything away compared with the one served (an
emptied file, a gateway left without grants: `emptying.py`) is refused too,
unless the pipeline was made with `allow_emptying`; warnings about the served
set (empty files, gateways granting nothing) are shown by `agentxds status`.

The data flows one way: nothing downstream ever reaches back into the policies.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from xds_server.controlplane import emptying, runtime_endpoints
from xds_server.controlplane.runtime_endpoints import RuntimeEndpoints
from xds_server.controlplane.verify import check_consistent
from xds_server.ir.build import BuildRefused, build_ir
from xds_server.ir.memo import BuildMemo
from xds_server.ir.types import IR
from xds_server.policy.diagnostics import PolicyError
from xds_server.sources import PolicySource
from xds_server.sources.directory import DirectorySource
from xds_server.sources.registry import RegisteredSource
from xds_server.translate import GatewayResources, translate
from xds_server.translate.memo import TranslateMemo
from xds_server.xds import snapshot as xds
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.snapshot import Snapshot
from xds_server.xds.status import StatusRecorder

log = logging.getLogger(__name__)


class InconsistentResources(AssertionError):
    """Translation produced resources that do not refer to each other correctly (a bug)."""


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did: `ok` means published (or unchanged); `errors` are policy errors,
    `internal` is set when the gateway itself failed (a bug)."""

    ok: bool
    errors: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)  # gateway → snapshot version now served
    changed: tuple[str, ...] = ()  # gateways whose snapshot changed
    seconds: float = 0.0
    internal: str | None = None
    warnings: tuple[str, ...] = ()  # about the published set: emptied files, gateways without grants


def by_type_url(resources: GatewayResources) -> dict[str, tuple[Message, ...]]:
    """One gateway's resources per xDS type URL, in `snapshot.ORDER`."""
    by_type: dict[str, tuple[Message, ...]] = {
        xds.CLUSTER: resources.clusters,
        xds.ENDPOINT: resources.endpoints,
        xds.SECRET: resources.secrets,
        xds.EXTENSION_CONFIG: resources.extension_configs,
        xds.LISTENER: resources.listeners,
        xds.SCOPED_ROUTE: resources.scopes,
        xds.ROUTE: resources.routes,
    }
    return {t: by_type[t] for t in xds.ORDER}


def to_snapshot(resources: GatewayResources) -> Snapshot:
    return Snapshot.build(by_type_url(resources))


def translate_checked(ir: IR, memo: TranslateMemo | None = None) -> dict[str, GatewayResources]:
    """Translate and verify; raises InconsistentResources (or whatever a translator raised) on a bug."""
    resources = translate(ir, memo)
    problems = [p for name, res in resources.items() for p in check_consistent(name, res)]
    if problems:
        raise InconsistentResources("\n".join(problems))
    return resources


def compile_policies(source: PolicySource | str | os.PathLike[str]) -> tuple[IR, dict[str, GatewayResources]]:
    """Load, resolve and translate; raises PolicyError (every diagnostic), or an internal error."""
    ir = build_ir(as_source(source).load())
    return ir, translate_checked(ir)


def as_source(source: PolicySource | str | os.PathLike[str]) -> PolicySource:
    """A policy source as given, or the directory (or file) at a path."""
    return DirectorySource.of(source) if isinstance(source, (str, os.PathLike)) else source


def referenced_files(ir: IR, memo: TranslateMemo | None = None) -> frozenset[Path]:
    """Every file the IR names (absolute paths): certificates, keys, trust bundles, JWKS, secrets.

    These are read when the IR is built (or by the policy service), so a
    change to any of them must trigger a rebuild just like a policy edit.
    Found by walking the IR for fields named `file` or `*_file`, so a new
    file reference in the IR is followed without touching this function.
    With `memo`, a route object walked before is not walked again.
    """
    found: set[Path] = set()
    for gateway in ir.gateways:
        for part in gateway.parts():
            found |= (memo.result(("files", id(part)), part, lambda part=part: _files_in(part))  # type: ignore[misc]
                      if memo is not None else _files_in(part))  # fmt: skip
    return frozenset(found)


def _files_in(value: Any) -> frozenset[Path]:
    found: set[Path] = set()

    def walk(value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                item = getattr(value, f.name)
                if (f.name == "file" or f.name.endswith("_file")) and isinstance(item, str) and item:
                    found.add(Path(item))
                elif not isinstance(item, str):
                    walk(item)
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    walk(value)
    return frozenset(found)


class Pipeline:
    """Owns the publish step for one policy source."""

    def __init__(
        self,
        source: PolicySource | str | os.PathLike[str],
        cache: SnapshotCache,
        recorder: StatusRecorder,
        *,
        allow_emptying: bool = False,
        coverage_file: Path | None = None,
        runtime: RuntimeEndpoints | None = None,
    ):
        self.source = as_source(source)
        # Endpoints set at run time (the endpoints file and API), put into the IR of every build.
        self.runtime = runtime
        self.cache = cache
        self.recorder = recorder
        self.allow_emptying = allow_emptying
        self.ir: IR | None = None  # the IR of the last good configuration
        # What the last good configuration covers; kept in `coverage_file` (if given) across restarts.
        self.coverage_file = coverage_file
        self.coverage = emptying.load(coverage_file) if coverage_file is not None else None
        # Files the latest loadable policies name (kept when a later edit does not load),
        # for the watcher: their changes rebuild too, even when the build they broke was refused.
        self.files: frozenset[Path] = frozenset()
        # What the last builds made of unchanged inputs (the result is the same without them).
        self.build_memo = BuildMemo()
        self.translate_memo = TranslateMemo()

    @property
    def policy_dir(self) -> Path:
        """The directory the watcher follows (directory sources only)."""
        if not isinstance(self.source, DirectorySource):
            raise TypeError(f"policy source {self.source.name} is not a directory")
        return self.source.path

    def reload(self) -> ReloadResult:
        """Build and publish the source's current policies; never raises (see the module docstring).
        With runtime registrations that keep the configuration from building, Git's policies are
        built alone and the registrations reported as left out (Git always wins)."""
        result = self._reload()
        source = self.source
        if result.ok or not isinstance(source, RegisteredSource) or not source.served:
            return result
        why = "; ".join([*result.errors, *([result.internal.splitlines()[-1]] if result.internal else [])])
        source.without_registrations[:] = [f"the configuration did not build with them ({why})"]
        try:
            alone = self._reload()
        finally:
            source.without_registrations.clear()
        return alone if alone.ok else result

    def _reload(self) -> ReloadResult:
        started = time.perf_counter()
        try:
            try:
                policy_set = self.source.load()
            except PolicyError as exc:
                return self._refuse(tuple(str(d) for d in exc.diagnostics), started)
            try:
                ir = build_ir(policy_set, self.build_memo)
            except BuildRefused as exc:
                # A file the policies name cannot be used: follow it, so fixing it rebuilds.
                self.files = referenced_files(exc.ir)
                return self._refuse(tuple(str(d) for d in exc.diagnostics), started)
            runtime_notes: list[str] = []
            if self.runtime is not None:
                error = self.runtime.refresh()
                applied = runtime_endpoints.apply(ir, self.runtime.current())
                ir, runtime_notes = applied.ir, [*applied.conflicts, *([error] if error else [])]
            with self.translate_memo.active():
                self.files = referenced_files(ir, self.translate_memo)
                if self.runtime is not None and self.runtime.file is not None:
                    self.files |= {Path(os.path.abspath(self.runtime.file))}
                resources = translate_checked(ir)
            coverage = emptying.Coverage.of(policy_set, ir)
            lost = emptying.losses(self.coverage, coverage) if self.coverage else []
            if lost and not self.allow_emptying:
                return self._refuse(emptying.refusal(lost), started)
            snapshots = {group: to_snapshot(res) for group, res in resources.items()}
        except Exception:
            # Anything else, at any stage, is a bug of the gateway: the watcher must live on.
            return self._internal_error(traceback.format_exc(), started)
        notes = [f"published on purpose ({emptying.OPT_IN_FLAG}): {d}" for d in lost]
        notes += [str(d) for d in emptying.warnings(coverage)]
        notes += runtime_notes
        notes += getattr(self.source, "conflicts", ())  # registrations left out (sources/registry.py)
        return self._publish(ir, coverage, snapshots, notes, started)

    def _publish(
        self, ir: IR, coverage: emptying.Coverage, snapshots: dict[str, Snapshot], notes: list[str], started: float
    ) -> ReloadResult:
        changed = []
        versions = {}
        for group in sorted(set(snapshots) | set(self.cache.groups())):
            # A gateway removed from the policies gets an empty snapshot: its
            # Envoys drop the listener rather than keep serving stale rules.
            snap = snapshots.get(group) or Snapshot.build({})
            if self.cache.set(group, snap):
                changed.append(group)
            versions[group] = snap.version
            self.recorder.set_snapshot_version(group, snap.version)
        self.ir = ir
        self.coverage = coverage
        if self.coverage_file is not None:
            try:
                emptying.save(coverage, self.coverage_file)
            except OSError as exc:  # the published configuration stands; only the restart check is weaker
                log.warning("cannot keep what was published in %s: %s", self.coverage_file, exc)
        self.recorder.set_policy_errors([])
        self.recorder.set_internal_errors([])
        self.recorder.set_policy_warnings(notes)
        seconds = time.perf_counter() - started
        if changed:
            log.info(
                "policies published: %s (%.0f ms)", ", ".join(f"{g}@{versions[g]}" for g in changed), seconds * 1000
            )
        if notes and changed:
            log.warning("policy warnings:\n  %s", "\n  ".join(notes))
        return ReloadResult(ok=True, versions=versions, changed=tuple(changed), seconds=seconds, warnings=tuple(notes))

    def _kept(self) -> str:
        return "the last good configuration keeps serving" if self.ir else "nothing is served yet"

    def _refuse(self, errors: tuple[str, ...], started: float) -> ReloadResult:
        self.recorder.set_policy_errors(errors)
        self.recorder.set_internal_errors([])
        log.error("policy change refused (%s):\n  %s", self._kept(), "\n  ".join(errors))
        versions = self.cache.groups()
        return ReloadResult(ok=False, errors=errors, versions=versions, seconds=time.perf_counter() - started)

    def _internal_error(self, stack: str, started: float) -> ReloadResult:
        self.recorder.set_policy_errors([])
        self.recorder.set_internal_errors([stack.rstrip()])
        log.error("internal error while building the configuration (a bug; %s):\n%s", self._kept(), stack)
        versions = self.cache.groups()
        return ReloadResult(
            ok=False, versions=versions, seconds=time.perf_counter() - started, internal=stack.splitlines()[-1]
        )
