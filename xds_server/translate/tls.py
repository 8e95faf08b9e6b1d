"""Downstream TLS (mTLS with SPIFFE IDs) and its SDS secrets.

The listener's TLS context names two secrets that Envoy fetches over the same
ADS stream (SDS, by name, like EDS and RDS):

    gateway/<gw>/cert    tls_certificate: the gateway's certificate chain and private key
    gateway/<gw>/trust   validation_context: the CAs that sign agent certificates

Their contents were read from the files the Gateway names when the IR was
built, so a rotated file only changes the Secret resources: Envoy swaps the
certificate or trust bundle in place (new connections use it, open ones keep
theirs), with no listener drain and no restart.

What the listener refuses at the handshake, before any HTTP is read:
- with client certificates required: a client that presents none;
- a certificate that does not chain to the trust bundle (another CA);
- a certificate without a URI SAN `spiffe://<trustDomain>/...` (another
  trust domain, or no SPIFFE ID at all), where certificates are required.
  Where they are optional, Envoy 1.40 cannot match SANs without also
  refusing clients that present none, so such a certificate passes the
  handshake and proves no agent (RBAC: unknown agent).
A valid certificate of an identity no agent has gets through the handshake
and is refused by RBAC (unknown agent), which matches the URI SAN against each
agent's SPIFFE ID (`authenticated.principal_name`, see rbac.py).

The files were checked when they were read (ir/materials.py): readable PEM, a
private key that matches the leaf certificate, a non-empty trust bundle. A
half-written rotation (new certificate, old key) is refused like a policy
error and never reaches Envoy; the next file event publishes the finished pair.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 (registers the Any type)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from xds_server.core.wire import typed
from xds_server.ir.types import GatewayIR

DOWNSTREAM_TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_SOCKET = "envoy.transport_sockets.tls"
ALPN = ("h2", "http/1.1")
#: Secrets come over the ADS stream that carries everything else.
SDS_CONFIG = {"ads": {}, "resource_api_version": "V3"}


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
    tls = gateway.listener.tls
    if tls is None:
        return None
    common: dict[str, Any] = {
        "tls_certificate_sds_secret_configs": [_sds(certificate_secret_name(gateway.name))],
        "alpn_protocols": list(ALPN),
    }
    if tls.trust_bundle_file is not None:
        validation: dict[str, Any] = {}
        # Envoy 1.40 fails the handshake of a client with no certificate when SANs are to be
        # matched, even with require_client_certificate false. Where certificates are optional
        # the trust domain is left to RBAC (each agent's exact SPIFFE ID), so a certificate of
        # another trust domain is refused there as an unknown agent instead.
        if tls.trust_domain is not None and tls.require_client_certificate:
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


def gateway_secrets(gateway: GatewayIR) -> list[Secret]:
    """The SDS secrets the gateway's listener names (none without TLS)."""
    tls = gateway.listener.tls
    if tls is None:
        return []
    cert_secret = Secret(name=certificate_secret_name(gateway.name))
    cert_secret.tls_certificate.certificate_chain.inline_bytes = tls.certificate_pem.encode()
    cert_secret.tls_certificate.private_key.inline_bytes = tls.private_key.value.encode()
    secrets = [cert_secret]
    if tls.trust_bundle_pem is not None:
        trust = Secret(name=trust_secret_name(gateway.name))
        trust.validation_context.trusted_ca.inline_bytes = tls.trust_bundle_pem.encode()
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
