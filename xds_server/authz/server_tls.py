"""TLS on the policy service's decision ports: the gRPC port (ext_authz, ext_proc) and the HTTP port
(ext_authz over HTTP, virtual servers, discovery). The approvals port is not covered (it is for operators).

    agentxds serve DIR --policy-tls-cert cert.pem --policy-tls-key key.pem [--policy-tls-client-ca ca.pem]

Envoy's side is the Gateway's `policyService.tls` (translate/policy_service.py): the CAs it verifies this
certificate with, the name it expects in it, and its own client certificate. With a client CA, a client
that presents no certificate signed by it fails the handshake (mTLS): nothing it sends is read.

The files are read again when they change (looked at on each new connection, at most once a second): a
renewed certificate (cert-manager, SPIRE) or client CA file is used from the next handshake, with no
restart; open connections keep theirs. A half-written renewal (a certificate and a key that do not
match, a file that does not parse, files changing while read) is logged once and the last good files
stay in use until the files are whole. The paths are kept as given (not resolved): a Kubernetes Secret
volume swaps a symlink to a new directory and removes the old one.

No TLS session is resumed across a change of files (the HTTP port: TLS 1.3 only, no tickets, so none at
all; the gRPC port: a new TLS context, with new ticket keys, for every change): a resumed session skips the
client certificate's check, which would let a client of a CA since removed from the client CA file back in.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

_LOOK_EVERY_S = 1.0  # how often the files are looked at, at most (a handshake does it)


class ServerTlsError(ValueError):
    """The files cannot be used (unreadable, not PEM, a key that does not match the certificate)."""


@dataclass(frozen=True)
class ServerTls:
    """The policy service's certificate and key, and the CAs whose client certificates it requires
    (None: no client certificate asked for)."""

    certificate_file: Path
    private_key_file: Path
    client_ca_file: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.certificate_file, self.private_key_file, *((self.client_ca_file,) if self.client_ca_file else ()))

    def describe(self) -> str:
        return "TLS" + (" (client certificates required)" if self.client_ca_file else "")


@dataclass(frozen=True)
class _Material:
    certificate: bytes
    private_key: bytes
    client_ca: bytes | None


class ServedTls:
    """The files of a `ServerTls` as the two servers use them, followed when they change.

    Made, it has read them (or raised ServerTlsError: at start, a bad file is fatal). Then
    `ssl_context()` (asyncio, HTTP port) and `grpc_credentials()` (gRPC port) serve the newest good
    files from the next handshake on. Thread-safe: gRPC asks from its own threads.
    """

    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stamp_now()
        self._failed: tuple[tuple[int, int], ...] | None = None  # the files' stamp last refused (logged once)
        self._material, self._context = self._load()
        # The context asyncio's server holds for good; each handshake moves to the newest (`ssl_context`).
        self._front = self._context
        self._looked_at = time.monotonic()

    # -- the files -------------------------------------------------------------

    def _stamp_now(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self.tls.files:
            try:
                st = path.stat()  # through symlinks: the file a Secret volume points at now
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((-1, -1))
        return tuple(stamps)

    def _load(self) -> tuple[_Material, ssl.SSLContext]:
        """The files now, and a context serving them (raises ServerTlsError)."""

        def read(path: Path, what: str) -> bytes:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ServerTlsError(f"{what} {path}: {exc.strerror or exc}") from None
            if b"-----BEGIN " not in data:
                raise ServerTlsError(f"{what} {path}: not PEM")
            return data

        material = _Material(
            read(self.tls.certificate_file, "certificate"),
            read(self.tls.private_key_file, "private key"),
            read(self.tls.client_ca_file, "client CA file") if self.tls.client_ca_file else None,
        )
        context = self._new_context(material)  # the pair matches and parses, or this raises
        # The context read the files again; the gRPC port gets `material`: both must be the same pair.
        if (read(self.tls.certificate_file, "certificate"), read(self.tls.private_key_file, "private key")) != (
            material.certificate,
            material.private_key,
        ):
            raise ServerTlsError("the certificate or key changed while being read")
        return material, context

    def _new_context(self, material: _Material) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # TLS 1.3 and no tickets: no session can be resumed (see the module docstring). Envoy offers 1.3
        # (translate/cluster.py); so does Python.
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.num_tickets = 0
        context.options |= ssl.OP_NO_TICKET
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(self.tls.certificate_file, self.tls.private_key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ServerTlsError(f"certificate {self.tls.certificate_file} and private key "
                                 f"{self.tls.private_key_file} cannot be used together: {exc}") from None  # fmt: skip
        if material.client_ca is not None:
            try:
                context.load_verify_locations(cadata=material.client_ca.decode("ascii", errors="replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise ServerTlsError(f"client CA file {self.tls.client_ca_file}: {exc}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _follow(self) -> None:
        """Take in changed files (looked at once a second at most); files that cannot be used keep the
        last good ones, and are tried again at the next look."""
        now = time.monotonic()
        with self._lock:
            if now - self._looked_at < _LOOK_EVERY_S:
                return
            self._looked_at = now
            stamp = self._stamp_now()
            if stamp == self._stamp:
                return
            try:
                material, context = self._load()
            except ServerTlsError as exc:
                if stamp != self._failed:
                    log.error("policy service TLS: %s; still serving the last good certificate", exc)
                    self._failed = stamp
                return
            self._stamp, self._material, self._context, self._failed = stamp, material, context, None
            log.info("policy service TLS: serving the renewed files from the next connection")

    # -- what the servers use --------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """For asyncio's `create_server(ssl=...)`: a context whose handshakes use the newest good files."""

        def newest(connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            # Called on every ClientHello, with or without SNI: the connection takes the newest certificate
            # and client CAs. OpenSSL keeps the first context's verify mode (SSL_set_SSL_CTX does not copy
            # it), which is why every context here has the same one: the client CA option is fixed at start.
            self._follow()
            connection.context = self._context

        self._front.sni_callback = newest
        return self._front

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For the gRPC server: asked for the newest files on each new connection (a new configuration is
        a new TLS context in gRPC, so sessions of the old one are not resumed)."""

        def configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(material.private_key, material.certificate)], root_certificates=material.client_ca
            )

        served = [self._material]  # what gRPC has now

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            self._follow()
            with self._lock:
                material = self._material
                if material is served[0]:
                    return None  # unchanged: gRPC keeps what it has
                served[0] = material
            return configuration(material)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self._material), fetch, require_client_authentication=self.tls.client_ca_file is not None
        )
