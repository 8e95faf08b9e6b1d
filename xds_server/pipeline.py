"""load → IR → translate → verify → publish, keeping the last good configuration.

`Pipeline.reload()` runs the whole chain on the policy directory. Only a set
that passes every stage is published; otherwise the previous snapshots keep
serving and the errors (with file, line and field) are logged, returned and
recorded for `agentxds status`. The data flows one way: nothing downstream
ever reaches back into the policies.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from xds_server.ir.build import build_ir
from xds_server.ir.types import IR
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_directory
from xds_server.translate import GatewayResources, translate
from xds_server.verify import check_consistent
from xds_server.xds import snapshot as xds
from xds_server.xds.cache import SnapshotCache
from xds_server.xds.snapshot import Snapshot
from xds_server.xds.status import StatusRecorder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did: `errors` empty means published (or unchanged)."""

    ok: bool
    errors: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)  # gateway → snapshot version now served
    changed: tuple[str, ...] = ()  # gateways whose snapshot changed
    seconds: float = 0.0


def to_snapshot(resources: GatewayResources) -> Snapshot:
    return Snapshot.build(
        {
            xds.CLUSTER: resources.clusters,
            xds.ENDPOINT: resources.endpoints,
            xds.LISTENER: resources.listeners,
            xds.ROUTE: resources.routes,
        }
    )


def compile_policies(policy_dir: Path) -> tuple[IR, dict[str, GatewayResources]]:
    """Load, resolve and translate; raises PolicyError (with every diagnostic) or ValueError (inconsistent xDS)."""
    ir = build_ir(load_directory(policy_dir))
    resources = translate(ir)
    problems = [p for name, res in resources.items() for p in check_consistent(name, res)]
    if problems:
        raise ValueError("\n".join(problems))
    return ir, resources


class Pipeline:
    """Owns the publish step for one policy directory."""

    def __init__(self, policy_dir: str | Path, cache: SnapshotCache, recorder: StatusRecorder) -> None:
        self.policy_dir = Path(policy_dir)
        self.cache = cache
        self.recorder = recorder
        self.ir: IR | None = None  # the IR of the last good configuration

    def reload(self) -> ReloadResult:
        started = time.perf_counter()
        try:
            ir, resources = compile_policies(self.policy_dir)
        except PolicyError as exc:
            errors = tuple(str(d) for d in exc.diagnostics)
            return self._refuse(errors, started)
        except ValueError as exc:
            return self._refuse(tuple(str(exc).splitlines()), started)

        changed = []
        versions = {}
        groups = set(resources) | set(self.cache.groups())
        for group in sorted(groups):
            # A gateway removed from the policies gets an empty snapshot: its
            # Envoys drop the listener rather than keep serving stale rules.
            snap = to_snapshot(resources[group]) if group in resources else Snapshot.build({})
            if self.cache.set(group, snap):
                changed.append(group)
            versions[group] = snap.version
            self.recorder.set_snapshot_version(group, snap.version)
        self.ir = ir
        self.recorder.set_policy_errors([])
        seconds = time.perf_counter() - started
        if changed:
            log.info("policies published: %s (%.0f ms)",
                     ", ".join(f"{g}@{versions[g]}" for g in changed), seconds * 1000)
        return ReloadResult(ok=True, versions=versions, changed=tuple(changed), seconds=seconds)

    def _refuse(self, errors: tuple[str, ...], started: float) -> ReloadResult:
        self.recorder.set_policy_errors(errors)
        kept = "the last good configuration keeps serving" if self.ir else "nothing is served yet"
        log.error("policy change refused (%s):\n  %s", kept, "\n  ".join(errors))
        versions = self.cache.groups()
        return ReloadResult(ok=False, errors=errors, versions=versions, seconds=time.perf_counter() - started)
