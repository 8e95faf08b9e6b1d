"""The policy service as a TLS client of an upstream the IR describes (`UpstreamTlsIR`): a virtual
server's members, a tool-guarded backend whose tools it reads, a virtual server's front on its own port.

The same checks as Envoy's cluster for that upstream (translate/cluster.py): the certificate chains to
`caFile` (the system's roots without one) and carries the server name, which is `sni` when given (sent
as SNI too), else the URL's host; with `certificateFile`, the client certificate is presented.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from xds_server.ir.types import UpstreamIR, UpstreamTlsIR


def upstream_url(upstream: UpstreamIR) -> str:
    """The URL of `upstream`'s protocol endpoint on its first endpoint (https with TLS)."""
    endpoint = upstream.endpoints[0]
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{'https' if upstream.tls is not None else 'http'}://{host}:{endpoint.port}{upstream.path}"


def client_context(tls: UpstreamTlsIR) -> ssl.SSLContext:
    """A context verifying the upstream as `tls` says, presenting its client certificate if any."""
    context = ssl.create_default_context(cadata=tls.ca_pem) if tls.ca_pem else ssl.create_default_context()
    if tls.certificate_file and tls.private_key is not None and tls.private_key.file:
        context.load_cert_chain(tls.certificate_file, tls.private_key.file)
    return context


def sni_extensions(tls: UpstreamTlsIR | None) -> dict[str, Any]:
    """A request's extensions (httpx) that send and verify `sni` instead of the URL's host."""
    return {"sni_hostname": tls.sni} if tls is not None and tls.sni else {}


def sni_hook(tls: UpstreamTlsIR | None) -> list[Callable[[Any], Awaitable[None]]]:
    """Request hooks (httpx `event_hooks["request"]`) doing `sni_extensions` for every request of a client."""
    extensions = sni_extensions(tls)
    if not extensions:
        return []

    async def with_sni(request: Any) -> None:
        request.extensions.update(extensions)

    return [with_sni]
