"""Secrets that policies only reference (environment variables, files): reading them, and
what is shown instead of them.

The IR builder reads the secrets the translators need (API keys), so the
values reach Envoy's configuration without translators touching the
environment or the disk; the policy service reads its own (a token exchange
client secret). Wherever a value is shown (render, goldens, logs) it is
`redacted`: its size and digest, never its bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_REDACTED = re.compile(r"^\[redacted: \d+ bytes, sha256 [0-9a-f]{16}\]$")


class SecretUnavailable(ValueError):
    """A referenced secret cannot be read; the build is refused (fail closed)."""


def read_secret(env: str | None, file: str | None, *, what: str) -> str:
    """The secret in environment variable `env`, or in `file` (surrounding whitespace dropped)."""
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise SecretUnavailable(f"{what}: environment variable {env} is not set")
        return value.strip()
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretUnavailable(f"{what}: cannot read {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretUnavailable(f"{what}: {file} is not UTF-8 text (write the secret as text, "
                                    "e.g. `openssl rand -hex 32`)") from None  # fmt: skip
        if not value:
            raise SecretUnavailable(f"{what}: {file} is empty")
        return value
    raise SecretUnavailable(f"{what}: no env or file given")


def redacted(data: bytes | str) -> str:
    """What is shown instead of secret material: `[redacted: N bytes, sha256 <16 hex>]`.

    Idempotent: a value that is already such a marker (an IR loaded from its
    rendered YAML carries markers in place of secrets) is returned as it is.
    """
    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
    if _REDACTED.match(text):
        return text
    raw = data.encode() if isinstance(data, str) else data
    return f"[redacted: {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]}]"
