"""load → IR → translate → verify → publish, keeping the last good configuration.

`Pipeline.reload()` runs the whole chain on the policy directory. Only a set
that passes every stage is published; otherwise the previous snapshots keep
serving and the errors (with file, line and field) are logged, returned and
recorded for `agentxds status`. The data flows one way: nothing downstream
ever reaches back into the policies.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from xds_server.controlplane.verify import check_consistent
from xds_server.ir.build import build_ir
from xds_server.ir.types import IR
from xds_server.policy.diagnostics import PolicyError
from xds_server.policy.load import load_directory
from xds_server.translate import GatewayResources, translate
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


def by_type_url(resources: GatewayResources) -> dict[str, tuple[Message, ...]]:
    """One gateway's resources per xDS type URL, in `snapshot.ORDER`."""
    by_type: dict[str, tuple[Message, ...]] = {
        xds.CLUSTER: resources.clusters,
        xds.ENDPOINT: resources.endpoints,
        xds.SECRET: resources.secrets,
        xds.LISTENER: resources.listeners,
        xds.ROUTE: resources.routes,
    }
    return {t: by_type[t] for t in xds.ORDER}


def to_snapshot(resources: GatewayResources) -> Snapshot:
    return Snapshot.build(by_type_url(resources))


def translate_checked(ir: IR) -> dict[str, GatewayResources]:
    """Translate and verify; raises ValueError for an unreadable referenced file (certificate,
    key, API key...) or inconsistent xDS."""
    resources = translate(ir)
    problems = [p for name, res in resources.items() for p in check_consistent(name, res)]
    if problems:
        raise ValueError("\n".join(problems))
    return resources


def compile_policies(policy_dir: Path) -> tuple[IR, dict[str, GatewayResources]]:
    """Load, resolve and translate; raises PolicyError (with every diagnostic) or ValueError (see translate_checked)."""
    ir = build_ir(load_directory(policy_dir))
    return ir, translate_checked(ir)


def referenced_files(ir: IR) -> frozenset[Path]:
    """Every file the IR names (absolute paths): certificates, keys, trust bundles, JWKS, secrets.

    These are read at build time (or by the policy service), so a change to
    any of them must trigger a rebuild just like a policy edit. Found by
    walking the IR for fields named `*_file`, so a new file reference in the
    IR is followed without touching this function.
    """
    found: set[Path] = set()

    def walk(value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                item = getattr(value, f.name)
                if f.name.endswith("_file") and isinstance(item, str) and item:
                    found.add(Path(item))
                else:
                    walk(item)
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    walk(ir)
    return frozenset(found)


class Pipeline:
    """Owns the publish step for one policy directory."""

    def __init__(self, policy_dir: str | Path, cache: SnapshotCache, recorder: StatusRecorder) -> None:
        self.policy_dir = Path(policy_dir)
        self.cache = cache
        self.recorder = recorder
        self.ir: IR | None = None  # the IR of the last good configuration
        # Files the latest loadable policies name (kept when a later edit does not load),
        # for the watcher: their changes rebuild too, even when the build they broke was refused.
        self.files: frozenset[Path] = frozenset()

    def reload(self) -> ReloadResult:
        started = time.perf_counter()
        try:
            ir = build_ir(load_directory(self.policy_dir))
            self.files = referenced_files(ir)
            resources = translate_checked(ir)
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
            log.info(
                "policies published: %s (%.0f ms)", ", ".join(f"{g}@{versions[g]}" for g in changed), seconds * 1000
            )
        return ReloadResult(ok=True, versions=versions, changed=tuple(changed), seconds=seconds)

    def _refuse(self, errors: tuple[str, ...], started: float) -> ReloadResult:
        self.recorder.set_policy_errors(errors)
        kept = "the last good configuration keeps serving" if self.ir else "nothing is served yet"
        log.error("policy change refused (%s):\n  %s", kept, "\n  ".join(errors))
        versions = self.cache.groups()
        return ReloadResult(ok=False, errors=errors, versions=versions, seconds=time.perf_counter() - started)
