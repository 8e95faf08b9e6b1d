"""Downstream TLS (mTLS with SPIFFE IDs) and its SDS secrets.

The listener's TLS context names two secrets that Envoy fetches over the same
ADS stream (SDS, by name, like EDS and RDS):

    gateway/<gw>/cert    tls_certificate: the gateway's certificate chain and private key
    gateway/<gw>/trust   validation_context: the CAs that sign agent certificates

Their contents are read from the files the Gateway names at build time, so a
rotated file only changes the Secret resources: Envoy swaps the certificate
or trust bundle in place (new connections use it, open ones keep theirs), with
no listener drain and no restart.

What the listener refuses at the handshake, before any HTTP is read:
- with client certificates required: a client that presents none;
- a certificate that does not chain to the trust bundle (another CA);
- a certificate without a URI SAN `spiffe://<trustDomain>/...` (another
  trust domain, or no SPIFFE ID at all).
A valid certificate of an identity no agent has gets through the handshake
and is refused by RBAC (unknown agent), which matches the URI SAN against each
agent's SPIFFE ID (`authenticated.principal_name`, see rbac.py).

The files are checked while building: readable PEM, a private key that
matches the leaf certificate, a non-empty trust bundle. A half-written
rotation (new certificate, old key) is refused like a policy error and never
reaches Envoy; the next file event publishes the finished pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 (registers the Any type)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from xds_server.ir.types import DownstreamTlsIR, GatewayIR
from xds_server.translate.proto import typed

DOWNSTREAM_TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_SOCKET = "envoy.transport_sockets.tls"
ALPN = ("h2", "http/1.1")
#: Secrets come over the ADS stream that carries everything else.
SDS_CONFIG = {"ads": {}, "resource_api_version": "V3"}


class TlsMaterialError(ValueError):
    """A certificate, key or trust bundle file cannot be used; the build is refused."""


def certificate_secret_name(gateway: str) -> str:
    return f"gateway/{gateway}/cert"


def trust_secret_name(gateway: str) -> str:
    return f"gateway/{gateway}/trust"


def spiffe_prefix(trust_domain: str) -> str:
    """Every SPIFFE ID of the trust domain starts with this (the slash keeps example.org.evil out)."""
    return f"spiffe://{trust_domain}/"


def _sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": SDS_CONFIG}


def downstream_transport_socket(gateway: GatewayIR) -> dict[str, Any] | None:
    """The listener's TLS transport socket, or None for plain HTTP."""
    tls = gateway.tls
    if tls is None:
        return None
    common: dict[str, Any] = {
        "tls_certificate_sds_secret_configs": [_sds(certificate_secret_name(gateway.name))],
        "alpn_protocols": list(ALPN),
    }
    if tls.trust_bundle_file is not None:
        validation: dict[str, Any] = {}
        if tls.trust_domain is not None:
            validation["match_typed_subject_alt_names"] = [
                {"san_type": "URI", "matcher": {"prefix": spiffe_prefix(tls.trust_domain)}}
            ]
        common["combined_validation_context"] = {
            # The static part (which SANs) is merged with the trust bundle Envoy gets over SDS.
            "default_validation_context": validation,
            "validation_context_sds_secret_config": _sds(trust_secret_name(gateway.name)),
        }
    context = {"common_tls_context": common, "require_client_certificate": tls.require_client_certificate}
    return {"name": TLS_SOCKET, "typed_config": typed(DOWNSTREAM_TLS_TYPE, context)}


# ---------------------------------------------------------------- secrets


def _read(path: str, what: str, gateway: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsMaterialError(f"gateway {gateway}: {what} {path}: cannot read it ({exc.strerror})") from None
    if not data.strip():
        raise TlsMaterialError(f"gateway {gateway}: {what} {path} is empty")
    return data


def _certificates(data: bytes, path: str, what: str, gateway: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TlsMaterialError(f"gateway {gateway}: {what} {path} holds no PEM certificate")
    return certs


def _check_key(key_pem: bytes, leaf: x509.Certificate, tls: DownstreamTlsIR, gateway: str) -> None:
    path = tls.private_key_file
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsMaterialError(
            f"gateway {gateway}: private key {path} is encrypted (Envoy needs it unencrypted)"
        ) from None
    except Exception as exc:  # ValueError, or UnsupportedAlgorithm for a key type cryptography lacks
        raise TlsMaterialError(f"gateway {gateway}: private key {path} is not a PEM private key ({exc})") from None

    def spki(public: Any) -> bytes:
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    if spki(key.public_key()) != spki(leaf.public_key()):
        raise TlsMaterialError(
            f"gateway {gateway}: private key {path} does not belong to the certificate in {tls.certificate_file}"
        )


def gateway_secrets(gateway: GatewayIR) -> list[Secret]:
    """The SDS secrets the gateway's listener names (none without TLS).

    Raises TlsMaterialError when a file is missing, unreadable, not PEM, or
    the key does not match the certificate.
    """
    tls = gateway.tls
    if tls is None:
        return []
    chain = _read(tls.certificate_file, "certificate", gateway.name)
    key = _read(tls.private_key_file, "private key", gateway.name)
    leaf = _certificates(chain, tls.certificate_file, "certificate", gateway.name)[0]
    _check_key(key, leaf, tls, gateway.name)
    cert_secret = Secret(name=certificate_secret_name(gateway.name))
    cert_secret.tls_certificate.certificate_chain.inline_bytes = chain
    cert_secret.tls_certificate.private_key.inline_bytes = key
    secrets = [cert_secret]
    if tls.trust_bundle_file is not None:
        bundle = _read(tls.trust_bundle_file, "trust bundle", gateway.name)
        _certificates(bundle, tls.trust_bundle_file, "trust bundle", gateway.name)
        trust = Secret(name=trust_secret_name(gateway.name))
        trust.validation_context.trusted_ca.inline_bytes = bundle
        secrets.append(trust)
    return secrets


def referenced_secret_names(tls_context: Any) -> list[str]:
    """Names of the SDS secrets a Downstream/UpstreamTlsContext refers to (for `verify`)."""
    common = tls_context.common_tls_context
    names = [c.name for c in common.tls_certificate_sds_secret_configs]
    if common.HasField("validation_context_sds_secret_config"):
        names.append(common.validation_context_sds_secret_config.name)
    if common.HasField("combined_validation_context"):
        combined = common.combined_validation_context
        if combined.HasField("validation_context_sds_secret_config"):
            names.append(combined.validation_context_sds_secret_config.name)
    return names
