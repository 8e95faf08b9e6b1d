"""Files and secrets the policies point at, read and checked while the IR is built.

Translators are pure functions of the IR, so everything they put into Envoy's
configuration that lives outside the policy files is read here: API keys
(environment or file), JWKS files, certificates, private keys and trust
bundles. Each reader checks what it read (a private key that matches its
certificate, a JWKS with keys, PEM where PEM is expected) and raises
`MaterialError`; the builder turns that into a diagnostic on the field that
names the file, so a half-written rotation is refused like a policy error,
with its file and line, and the last good configuration keeps serving.

Every build reads the files again, so a rotated file takes effect on the
next build (the watcher follows these files, see controlplane/watch.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xds_server.core.secrets import SecretUnavailable, read_secret
from xds_server.ir.principals import SecretIR


class MaterialError(ValueError):
    """A referenced file or secret cannot be used; `str()` says why in one sentence."""


def secret(env: str | None, file: str | None, what: str) -> SecretIR:
    """The secret in environment variable `env` or in `file` (absolute)."""
    try:
        return SecretIR(env, file, read_secret(env, file, what=what))
    except SecretUnavailable as exc:
        raise MaterialError(str(exc)) from None


MIN_SEALING_KEY_BYTES = 32


def sealing_key(env: str | None, file: str | None) -> SecretIR:
    """The key that seals what the gateway hands to clients: at least 32 bytes."""
    key = secret(env, file, f"sealing key ({env or file})")
    if len(key.value.encode()) < MIN_SEALING_KEY_BYTES:
        raise MaterialError(f"the sealing key ({key.source}) has {len(key.value.encode())} bytes; it needs at least "
                            f"{MIN_SEALING_KEY_BYTES} (e.g. `openssl rand -hex 32`)")  # fmt: skip
    return key


MIN_POLICY_SERVICE_SECRET_CHARS = 32
#: Safe in a header value and in Envoy's header formatters (no `%`), and not a mistake (no whitespace).
_POLICY_SERVICE_SECRET = re.compile(r"[A-Za-z0-9._~+/=-]+")


def policy_service_secret(env: str | None, file: str | None) -> SecretIR:
    """The secret Envoy shows the policy service: at least 32 characters of a header-safe alphabet."""
    found = secret(env, file, f"policy service secret ({env or file})")
    if not _POLICY_SERVICE_SECRET.fullmatch(found.value):
        raise MaterialError(f"the policy service secret ({found.source}) may hold only letters, digits and -._~+/= "
                            "(e.g. `openssl rand -hex 32`)")  # fmt: skip
    if len(found.value) < MIN_POLICY_SERVICE_SECRET_CHARS:
        raise MaterialError(f"the policy service secret ({found.source}) has {len(found.value)} characters; it "
                            f"needs at least {MIN_POLICY_SERVICE_SECRET_CHARS} (e.g. `openssl rand -hex 32`)")  # fmt: skip
    return found


def api_key(env: str | None, file: str | None, what: str) -> SecretIR:
    """An agent's API key: a secret that can be sent as one header value."""
    key = secret(env, file, what)
    if "," in key.value or re.search(r"[\x00-\x1f\x7f]", key.value):
        # A comma in an identity header is refused as two values; control characters cannot be sent.
        raise MaterialError(f"{what}: a key cannot contain ',' or control characters")
    return key


def _text(path: str, what: str) -> str:
    """The file's text (UTF-8, newlines kept as written, so its bytes reach Envoy unchanged)."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise MaterialError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise MaterialError(f"{what} {path}: not UTF-8 text") from None


def pem_text(path: str, what: str) -> str:
    """A file that must hold at least one PEM block (CA bundles and client certificates to upstreams)."""
    text = _text(path, what)
    if "-----BEGIN " not in text:
        raise MaterialError(f"{what} {path} holds no PEM block")
    return text


def certificates(path: str, what: str) -> tuple[str, list[x509.Certificate]]:
    """A non-empty PEM certificate file (a chain or a bundle): its text and certificates."""
    text = _text(path, what)
    if not text.strip():
        raise MaterialError(f"{what} {path} is empty")
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        certs = []
    if not certs:
        raise MaterialError(f"{what} {path} holds no PEM certificate")
    return text, certs


def private_key_for(path: str, leaf: x509.Certificate, certificate_path: str) -> SecretIR:
    """An unencrypted PEM private key that belongs to `leaf`."""
    text = _text(path, "private key")
    if not text.strip():
        raise MaterialError(f"private key {path} is empty")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except TypeError:
        raise MaterialError(f"private key {path} is encrypted (Envoy needs it unencrypted)") from None
    except Exception as exc:  # ValueError, or UnsupportedAlgorithm for a key type cryptography lacks
        raise MaterialError(f"private key {path} is not a PEM private key ({exc})") from None

    def spki(public: Any) -> bytes:
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    if spki(key.public_key()) != spki(leaf.public_key()):
        raise MaterialError(f"private key {path} does not belong to the certificate in {certificate_path}")
    return SecretIR(None, path, text)


def private_key_text(path: str, what: str) -> SecretIR:
    """A PEM private key for an upstream client certificate (checked for a PEM block only)."""
    return SecretIR(None, path, pem_text(path, what))


def checked_jwks(text: str, what: str) -> str:
    """`text` if it is a JWKS document with at least one key (Envoy would reject every token otherwise)."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise MaterialError(f"{what}: not JSON ({exc})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise MaterialError(f"{what}: not a JWKS document (an object with a non-empty `keys` list)")
    return text


def jwks_file(path: str, what: str) -> str:
    """A JWKS document read from `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise MaterialError(f"{what} {path}: cannot read it: {reason}") from None
    return checked_jwks(text, f"{what} {path}")
