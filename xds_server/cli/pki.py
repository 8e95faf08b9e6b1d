"""A development PKI for mTLS with SPIFFE IDs: a CA, the gateway's server
certificate and one client certificate (X.509-SVID) per agent.

Pure functions mint certificates in memory (`mint_ca`, `mint_server_cert`,
`mint_spiffe_cert`); `write_pem` writes one file atomically (private keys
with mode 0600), so a watcher never sees half a file; `write_dev_pki` is what
`agentxds certs` runs. Keys are ECDSA P-256: small, fast, and accepted by
Envoy and every TLS client that matters.

This is for development and tests. In production an agent's certificate
comes from its platform (SPIRE, cert-manager, a service mesh) and the gateway
only needs the trust bundle of that CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 30
#: Backdate `not_valid_before` a little: a peer whose clock is slightly behind still accepts a fresh certificate.
CLOCK_SKEW = dt.timedelta(minutes=5)
AGENT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
TRUST_DOMAIN_PATTERN = r"^[a-z0-9._-]+$"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey  # ECDSA P-256 for what this module mints

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """PKCS#8, unencrypted (Envoy reads the key without a passphrase)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def serial_number(self) -> int:
        return self.certificate.serial_number


def spiffe_id(trust_domain: str, agent: str) -> str:
    """The SPIFFE ID `agentxds certs` gives an agent: spiffe://<trust-domain>/agent/<name>."""
    if not re.fullmatch(TRUST_DOMAIN_PATTERN, trust_domain):
        raise ValueError(f"{trust_domain!r} is not a SPIFFE trust domain (lower-case letters, digits, '.', '_', '-')")
    if not re.fullmatch(AGENT_NAME_PATTERN, agent):
        raise ValueError(f"{agent!r} is not an agent name (lower-case letters, digits and '-')")
    return f"spiffe://{trust_domain}/agent/{agent}"


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentxds"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(ca: KeyPair | None, days: int, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after); a leaf never outlives the CA that signs it."""
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    start = _now(now) - CLOCK_SKEW
    end = _now(now) + dt.timedelta(days=days)
    if ca is not None:
        end = min(end, ca.certificate.not_valid_after_utc)
    return start, end


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def mint_ca(common_name: str = "agentxds development CA", *, days: int = DEFAULT_CA_DAYS,
            now: dt.datetime | None = None) -> KeyPair:  # fmt: skip
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    start, end = _validity(None, days, now)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def _leaf(
    ca: KeyPair,
    common_name: str,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    now: dt.datetime | None,
) -> KeyPair:
    key = _new_key()
    start, end = _validity(ca, days, now)
    public = key.public_key()
    try:
        ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(authority, critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def mint_server_cert(
    ca: KeyPair,
    *,
    dns_names: Iterable[str] = ("localhost",),
    ip_addresses: Iterable[str] = ("127.0.0.1",),
    common_name: str = "agentxds gateway",
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> KeyPair:
    """The gateway's server certificate (serverAuth) for these DNS names and IP addresses."""
    dns = sorted(set(dns_names))
    ips = sorted({ipaddress.ip_address(ip) for ip in ip_addresses}, key=lambda ip: (ip.version, int(ip)))
    if not dns and not ips:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ip) for ip in ips]
    return _leaf(ca, common_name, sans, ExtendedKeyUsageOID.SERVER_AUTH, days, now)


def mint_spiffe_cert(
    ca: KeyPair,
    spiffe: str,
    *,
    common_name: str | None = None,
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> KeyPair:
    """An X.509-SVID: a client certificate (clientAuth) whose only URI SAN is the SPIFFE ID `spiffe`."""
    if not spiffe.startswith("spiffe://") or "/" not in spiffe.removeprefix("spiffe://"):
        raise ValueError(f"{spiffe!r} is not a SPIFFE ID (spiffe://<trust-domain>/<path>)")
    name = common_name or spiffe.rsplit("/", 1)[-1]
    return _leaf(ca, name, [x509.UniformResourceIdentifier(spiffe)], ExtendedKeyUsageOID.CLIENT_AUTH, days, now)


def write_pem(path: str | Path, data: bytes, *, private: bool = False) -> Path:
    """Write `data` to `path` atomically (a temporary file renamed over it); mode 0600 when `private`.

    Renaming means a reader (Envoy's control plane rebuilding on a file event)
    sees the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_key_pair(pair: KeyPair, cert_path: str | Path, key_path: str | Path) -> tuple[Path, Path]:
    """Write the key first, then the certificate (each atomically)."""
    key = write_pem(key_path, pair.key_pem, private=True)
    return write_pem(cert_path, pair.cert_pem), key


def load_key_pair(cert_path: str | Path, key_path: str | Path) -> KeyPair:
    """Read a PEM certificate and its unencrypted PEM private key (one that can sign certificates)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"{key_path}: expected an ECDSA or RSA private key")
    return KeyPair(cert, key)


# ---------------------------------------------------------------- the `agentxds certs` layout


@dataclass(frozen=True)
class DevPki:
    """What `write_dev_pki` wrote (absolute paths)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    ca_reused: bool
    gateway_cert: Path
    gateway_key: Path
    agents: dict[str, tuple[str, Path, Path]] = field(default_factory=dict)  # name -> (SPIFFE ID, cert, key)
    trust_domain: str = ""


def ca_paths(directory: str | Path) -> tuple[Path, Path]:
    d = Path(directory)
    return d / "ca.crt", d / "ca.key"


def agent_paths(directory: str | Path, agent: str) -> tuple[Path, Path]:
    d = Path(directory) / "agents"
    return d / f"{agent}.crt", d / f"{agent}.key"


def _existing_agents(directory: Path) -> list[str]:
    agents = directory / "agents"
    if not agents.is_dir():
        return []
    return sorted(p.stem for p in agents.glob("*.crt") if re.fullmatch(AGENT_NAME_PATTERN, p.stem))


def _existing_server_names(cert_path: Path) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses of an existing gateway certificate ([] if none or unreadable)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return [], []
    return sans.get_values_for_type(x509.DNSName), [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def write_dev_pki(
    directory: str | Path,
    *,
    trust_domain: str,
    agents: Iterable[str] = (),
    gateway_hosts: Iterable[str] = (),
    gateway_ips: Iterable[str] = (),
    days: int = DEFAULT_DAYS,
    new_ca: bool = False,
    now: dt.datetime | None = None,
) -> DevPki:
    """Write (or refresh) a development PKI under `directory`:

        ca.crt, ca.key                 the CA (reused when both exist, unless `new_ca`)
        gateway.crt, gateway.key       server certificate: DNS localhost + IP 127.0.0.1 + the given ones
        agents/<name>.crt, .key        per agent, URI SAN spiffe://<trust_domain>/agent/<name>

    The gateway certificate is minted anew on every run (a new serial: a
    running gateway picks it up without a restart) and keeps the names and
    addresses it had. With `new_ca`, every agent certificate already under
    agents/ is re-issued too (the old ones would no longer chain to the CA).
    """
    directory = Path(directory).resolve()
    spiffe_id(trust_domain, "x")  # checks the trust domain before anything is written
    ca_cert_path, ca_key_path = ca_paths(directory)
    reused = not new_ca and ca_cert_path.exists() and ca_key_path.exists()
    names = list(dict.fromkeys([*agents, *(_existing_agents(directory) if not reused else [])]))
    ids = {name: spiffe_id(trust_domain, name) for name in names}  # validates before anything is written
    if reused:
        ca = load_key_pair(ca_cert_path, ca_key_path)
    else:
        ca = mint_ca(f"agentxds development CA ({trust_domain})", now=now)
    gateway_cert_path = directory / "gateway.crt"
    old_dns, old_ips = _existing_server_names(gateway_cert_path)
    server = mint_server_cert(ca, dns_names=["localhost", *old_dns, *gateway_hosts],
                              ip_addresses=["127.0.0.1", *old_ips, *gateway_ips], days=days, now=now)  # fmt: skip
    if not reused:
        write_key_pair(ca, ca_cert_path, ca_key_path)
    gateway_cert, gateway_key = write_key_pair(server, gateway_cert_path, directory / "gateway.key")
    written: dict[str, tuple[str, Path, Path]] = {}
    for name in names:
        cert_path, key_path = agent_paths(directory, name)
        write_key_pair(mint_spiffe_cert(ca, ids[name], days=days, now=now), cert_path, key_path)
        written[name] = (ids[name], cert_path, key_path)
    return DevPki(directory, ca_cert_path, ca_key_path, reused, gateway_cert, gateway_key, written, trust_domain)


def policy_snippet(pki: DevPki) -> str:
    """The Gateway `tls` block and Agent identities that use `pki` (absolute paths)."""
    lines = [
        "# In your Gateway's spec:",
        "  tls:",
        f"    certificateFile: {pki.gateway_cert}",
        f"    privateKeyFile: {pki.gateway_key}",
        "    clientCertificates:",
        f"      trustBundleFile: {pki.ca_cert}",
        f"      trustDomain: {pki.trust_domain}",
        "      required: true",
    ]
    for name, (sid, _, _) in sorted(pki.agents.items()):
        lines += [
            "---",
            "apiVersion: agentxds.dev/v1",
            "kind: Agent",
            f"metadata: {{name: {name}}}",
            f'spec: {{identity: {{spiffe: "{sid}"}}}}',
        ]
    return "\n".join(lines) + "\n"
