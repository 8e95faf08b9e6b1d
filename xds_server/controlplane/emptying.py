"""Edits that would silently take everything away: empty policy files, gateways left without grants.

An editor that truncates a file mid-save, a bad merge or a stray `> file`
leaves a policy set that is perfectly valid and grants nothing. Publishing it
would refuse every call of every agent, with nothing in the log to say why.
So the pipeline compares what each build *covers* with what the last
published build covered:

- a policy file that held documents and now holds none, and
- a gateway that had grants (or conditional rules) and now has none, or is gone,

are *losses*. Under `serve`/`up` a build with losses is refused like a policy
error, unless the operator started the control plane with `--allow-emptying`;
then it is published with a warning. The last published coverage is kept in
the state directory (`save` / `load`), so a restart compares its first build
with what was served before it, and an emptied file is refused after a restart
too. Independently of any previous build,
empty files and gateways without grants are *warnings* (`validate` prints them,
`status` shows them); they are never refused on their own, so a fresh start
and a new, not yet filled file are fine.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xds_server.core.wire import REGISTERED_ANNOTATION
from xds_server.ir.types import IR
from xds_server.policy.diagnostics import Diagnostic
from xds_server.policy.load import PolicySet
from xds_server.sources.registry import FILE_PREFIX as REGISTRY_FILE_PREFIX

OPT_IN_FLAG = "--allow-emptying"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coverage:
    """What one build covers: documents per policy file, grants per gateway (and where each is declared)."""

    documents: Mapping[str, int]  # policy file -> number of documents in it
    grants: Mapping[str, int]  # gateway name -> grants plus conditional rules over all its routes
    declared_at: Mapping[str, tuple[str, int]]  # gateway name -> (file, line) of its Gateway document

    @classmethod
    def of(cls, policy_set: PolicySet, ir: IR) -> Coverage:
        """The coverage of the policies in Git: what the runtime registry adds or takes away is meant,
        never an accident of an edit."""
        grants = {gw.name: sum(len(r.grants) + len(r.conditional_rules) for r in gw.routes
                               if r.annotation(REGISTERED_ANNOTATION) != "true") for gw in ir.gateways}  # fmt: skip
        declared = {g.name: (g.source.file, g.source.line) for g in policy_set.gateways}
        documents = {f: n for f, n in policy_set.documents.items() if not f.startswith(REGISTRY_FILE_PREFIX)}
        return cls(documents, grants, declared)


def save(coverage: Coverage, path: Path) -> None:
    """Keep `coverage` (what is published now) in `path`, atomically."""
    body = {"documents": dict(coverage.documents), "grants": dict(coverage.grants),
            "declaredAt": {g: list(at) for g, at in coverage.declared_at.items()}}  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, sort_keys=True))
    os.replace(tmp, path)


def load(path: Path) -> Coverage | None:
    """The coverage `save` kept in `path`; None when there is none (or it cannot be read: logged)."""
    try:
        body = json.loads(path.read_text())
        documents = {str(f): int(n) for f, n in body["documents"].items()}
        grants = {str(g): int(n) for g, n in body["grants"].items()}
        declared = {str(g): (str(at[0]), int(at[1])) for g, at in body["declaredAt"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        log.warning("ignoring %s (what was published before the restart): cannot read it: %s", path, exc)
        return None
    return Coverage(documents, grants, declared)


def losses(before: Coverage, after: Coverage) -> list[Diagnostic]:
    """What an edit from `before` (published) to `after` takes away wholesale; [] if nothing."""
    found = [
        Diagnostic(file, 0, "", f"this file had {count} policy document(s) and is now empty; every rule in it is gone")
        for file, count in sorted(before.documents.items())
        if count and after.documents.get(file) == 0
    ]
    for gateway, count in sorted(before.grants.items()):
        if not count:
            continue
        file, line = before.declared_at.get(gateway, ("", 0))
        if gateway not in after.grants:
            message = f"this gateway and its {count} grant(s) are gone; its listener would stop serving"
        elif after.grants[gateway] == 0:
            file, line = after.declared_at.get(gateway, (file, line))
            message = f"every grant is gone (it had {count}); every call on this gateway would be refused"
        else:
            continue
        found.append(Diagnostic(file, line, f"Gateway/{gateway}", message))
    return found


def warnings(now: Coverage) -> list[Diagnostic]:
    """Empty policy files and gateways that grant nothing, in any build (never refused by themselves)."""
    found = [
        Diagnostic(file, 0, "", "this file holds no policy documents")
        for file, count in sorted(now.documents.items())
        if count == 0
    ]
    for gateway, count in sorted(now.grants.items()):
        if count == 0:
            file, line = now.declared_at.get(gateway, ("", 0))
            found.append(Diagnostic(file, line, f"Gateway/{gateway}", "grants nothing: every call will be refused"))
    return found


def refusal(lost: list[Diagnostic]) -> tuple[str, ...]:
    """The policy errors refusing `lost`; the last one says how to publish such an edit on purpose."""
    hint = f" (not published; to publish such edits on purpose, start the control plane with {OPT_IN_FLAG})"
    return tuple(str(d) + (hint if i == len(lost) - 1 else "") for i, d in enumerate(lost))
