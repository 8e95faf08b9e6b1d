"""A directory of policy files (usually a Git checkout) as a policy source."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from xds_server.policy.doc_cache import DocumentCache
from xds_server.policy.load import PolicySet, load_directory


@dataclass(frozen=True)
class DirectorySource:
    """Every `*.yaml`/`*.yml` under `path` (recursively, hidden files skipped); `path` may be one file.

    The control plane's watcher follows the directory (controlplane/watch.py).
    Each load after the first reads again only the documents that changed
    (`DocumentCache`); what it returns is what a first load would.
    """

    path: Path
    cache: DocumentCache = field(default_factory=DocumentCache, compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> DirectorySource:
        return cls(Path(path))

    @property
    def name(self) -> str:
        return str(self.path)

    def load(self) -> PolicySet:
        return load_directory(self.path, self.cache)
