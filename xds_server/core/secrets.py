"""Read the secrets that policies only reference (environment variables, files).

Translation is the one place they are read, so a rotated file or a changed
variable takes effect on the next build, and the values never enter the IR.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretUnavailable(ValueError):
    """A referenced secret cannot be read; the build is refused (fail closed)."""


def read_secret(env: str | None, file: str | None, *, what: str) -> str:
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise SecretUnavailable(f"{what}: environment variable {env} is not set")
        return value.strip()
    if file is not None:
        try:
            value = Path(file).read_text().strip()
        except OSError as exc:
            raise SecretUnavailable(f"{what}: cannot read {file}: {exc.strerror}") from None
        if not value:
            raise SecretUnavailable(f"{what}: {file} is empty")
        return value
    raise SecretUnavailable(f"{what}: no env or file given")
